"""A producer process for limits tests and the benchmark: ``python -m tests.support.limits_producer``.

``publish SERVICE_KEY [PAUSE_S] [MAX_S]``: ``track.delay`` a record of
SERVICE_KEY every PAUSE_S seconds (default 0.01) until ``UsageLimitExceeded``
(or MAX_S, default 120), then print one JSON line: ``{"raised_at": epoch s or
null, "published": n, "error": class name}``. ``ready`` is printed (and
flushed) after the first record, so a caller knows the process is publishing.

``check SERVICE_KEY``: print ``check_limits(SERVICE_KEY)`` as JSON (the limit ids).

Configured by the ``AICM_*`` environment, as any producer.
"""

from __future__ import annotations

import json
import sys
import time

import aicm_tasks


def publish(service_key: str, pause_s: float, max_s: float) -> dict[str, object]:
    published = 0
    deadline = time.monotonic() + max_s
    while time.monotonic() < deadline:
        try:
            aicm_tasks.track.delay(service_key, {"input_tokens": 1, "output_tokens": 1})
        except aicm_tasks.UsageLimitExceeded as exc:
            return {
                "raised_at": time.time(),
                "published": published + 1,
                "error": type(exc).__name__,
                "mro": [c.__module__ + "." + c.__name__ for c in type(exc).__mro__],
            }
        published += 1
        if published == 1:
            print("ready", flush=True)
        time.sleep(pause_s)
    return {"raised_at": None, "published": published, "error": None}


def main(argv: list[str]) -> None:
    command, service_key = argv[0], argv[1]
    if command == "publish":
        pause_s = float(argv[2]) if len(argv) > 2 else 0.01
        max_s = float(argv[3]) if len(argv) > 3 else 120.0
        print(json.dumps(publish(service_key, pause_s, max_s)), flush=True)
    elif command == "check":
        found = aicm_tasks.check_limits(service_key, raise_on_match=False)
        print(json.dumps([item.limit_id for item in found]), flush=True)
    else:
        raise SystemExit(f"unknown command {command!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
