"""A small, fast stand-in for ``POST /track`` that answers every record ``queued``.

Run as its own process: ``python -m bench.stub_server --port 8123``. It parses
each body, echoes one ``queued`` result per ``response_id`` and keeps, in
memory, what the benchmark needs: records and requests received, unique
``response_id``s, and the first arrival time of each (for latency).

The real ``aicm-tasks serve`` validates and stores every record in SQLite
(about 60k records/s here), which would cap every figure; this stub only
parses JSON, so batched traffic tops out far above what any contender sends.

Endpoints (besides the two track paths):

* ``GET /healthz``: 200 once up;
* ``POST /reset``: forget everything;
* ``GET /stats``: counters and the first/last arrival times (epoch seconds);
* ``GET /arrivals``: ``{response_id: first arrival epoch seconds}``;
* ``POST /latency``: body ``{response_id: publish epoch seconds}``; answers
  latency percentiles (ms) for the ids that arrived, and how many did not.
"""

# ruff: noqa: RUF002, RUF003  (en dashes, ×, µ and – are meant)

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bench.stats import percentile

_JSON = "application/json"


class Counters:
    """What the stub has seen since the last reset."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget every record and time."""
        self.records = 0
        self.requests = 0
        self.bad_requests = 0
        self.arrivals: dict[str, float] = {}
        self.first_arrival: float | None = None
        self.last_arrival: float | None = None
        #: When the last *new* response_id arrived (duplicates do not move it).
        self.last_new_arrival: float | None = None

    def take(self, records: list[Any], now: float) -> list[str]:
        """Count a request's records; return their response_ids in order."""
        self.requests += 1
        self.records += len(records)
        if self.first_arrival is None:
            self.first_arrival = now
        self.last_arrival = now
        arrivals = self.arrivals
        ids: list[str] = []
        new = False
        for record in records:
            rid = record.get("response_id") if isinstance(record, dict) else None
            rid = rid if isinstance(rid, str) else ""
            ids.append(rid)
            if rid not in arrivals:
                arrivals[rid] = now
                new = True
        if new:
            self.last_new_arrival = now
        return ids

    def stats(self) -> dict[str, Any]:
        """The counters as a JSON-ready dict."""
        return {
            "records": self.records,
            "unique": len(self.arrivals),
            "requests": self.requests,
            "bad_requests": self.bad_requests,
            "first_arrival": self.first_arrival,
            "last_arrival": self.last_arrival,
            "last_new_arrival": self.last_new_arrival,
        }


def build_app() -> Starlette:
    """The stub as an ASGI app with its own counters."""
    counters = Counters()

    async def track(request: Request) -> Response:
        body = await request.body()
        now = time.time()
        try:
            document = json.loads(body)
        except ValueError:
            counters.bad_requests += 1
            return Response(b'{"detail":"not JSON"}', status_code=400, media_type=_JSON)
        if isinstance(document, dict) and isinstance(document.get("tracked"), list):
            records = document["tracked"]
        elif isinstance(document, dict):  # a single record posted on its own
            records = [document]
        else:
            counters.bad_requests += 1
            return Response(b'{"detail":"not an object"}', status_code=400, media_type=_JSON)
        ids = counters.take(records, now)
        results = [{"response_id": rid, "status": "queued"} for rid in ids]
        return Response(json.dumps({"results": results}), media_type=_JSON)

    async def healthz(request: Request) -> Response:
        return Response(b'{"ok":true}', media_type=_JSON)

    async def reset(request: Request) -> Response:
        counters.reset()
        return Response(b'{"ok":true}', media_type=_JSON)

    async def stats(request: Request) -> Response:
        return Response(json.dumps(counters.stats()), media_type=_JSON)

    async def arrivals(request: Request) -> Response:
        return Response(json.dumps(counters.arrivals), media_type=_JSON)

    async def latency(request: Request) -> Response:
        published: dict[str, float] = json.loads(await request.body())
        return Response(json.dumps(latency_summary(published, counters.arrivals)), media_type=_JSON)

    return Starlette(
        routes=[
            Route("/api/v1/track", track, methods=["POST"]),
            Route("/track", track, methods=["POST"]),
            Route("/healthz", healthz),
            Route("/reset", reset, methods=["POST"]),
            Route("/stats", stats),
            Route("/arrivals", arrivals),
            Route("/latency", latency, methods=["POST"]),
        ]
    )


def latency_summary(published: dict[str, float], arrivals: dict[str, float]) -> dict[str, Any]:
    """Latency (arrival − publish) percentiles in ms over the ids that arrived."""
    latencies_ms = sorted(
        (arrivals[rid] - sent) * 1000.0 for rid, sent in published.items() if rid in arrivals
    )
    found = bool(latencies_ms)
    return {
        "count": len(latencies_ms),
        "missing": len(published) - len(latencies_ms),
        "p50_ms": percentile(latencies_ms, 0.50) if found else None,
        "p99_ms": percentile(latencies_ms, 0.99) if found else None,
        "max_ms": latencies_ms[-1] if found else None,
    }


def main() -> None:
    """Serve the stub on 127.0.0.1 until killed."""
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(
        build_app(), host="127.0.0.1", port=args.port, log_level="warning", access_log=False
    )


if __name__ == "__main__":
    main()
