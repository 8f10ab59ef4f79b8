"""Scenario 7: usage limits: their cost on ``track.delay``, and how fast a trip stops every producer.

* ``track.delay`` p50 with ``AICM_LIMITS_ENABLED`` on vs off, each in a fresh
  producer process (as scenario 1). With limits on, the broker holds two
  triggered limits that do not match the record (another service; the same
  customer on another service), so every call runs the check in full.
* Propagation: a worker delivers to a ``/track`` server that signs triggered
  limits (``tests/support/limits.py``); several producer processes publish
  without pause (about 1,000 records/s each); once all publish, the server
  trips a limit on their service key ``limits_trip_after`` records later. The
  figure is, for the slowest producer, the time from the ``/track`` answer that
  carried the limit to its first ``UsageLimitExceeded``; the overshoot is how
  many records the server received after that answer (all of them published
  before the producers learnt of the trip, and still billed).
"""

# ruff: noqa: RUF003  (µ and × are meant)

from __future__ import annotations

import json
import logging
import time
from typing import Any

from aicm_tasks.broker.keys import Keys
from aicm_tasks.broker.limits import DEFAULT_SOURCE, LimitStore
from aicm_tasks.devtools.processes import wait_until
from bench.config import Counts
from bench.harness import Bench
from bench.records import CUSTOMER_KEY, SERVICE_KEY
from bench.scenarios.common import attempt, celery_worker_args, run_producer
from bench.stats import Figure
from tests.support.limits import LimitsServer, limit

logger = logging.getLogger(__name__)

PRODUCER = "tests.support.limits_producer"


def run(bench: Bench, counts: Counts) -> list[Figure]:
    """The cost figures (p50 on and off) and the propagation figures, ``counts.runs`` times."""
    cost = {
        state: Figure(f"limits.{state}.p50_us", f"track.delay, limits {state}, p50", "µs/call")
        for state in ("off", "on")
    }
    seen = Figure(
        "limits.propagation_ms",
        f"limit trip seen by all of {counts.limits_producers} producers",
        "ms",
    )
    overshoot = Figure("limits.overshoot", "records accepted after the trip", "records")
    for run_index in range(counts.runs):
        for state in ("off", "on"):
            try:
                cost[state].values.append(measure_cost(bench, counts, state == "on"))
            except Exception as exc:
                attempt([cost[state]], f"limits {state} run {run_index + 1}", exc)
        try:
            seen_ms, extra = measure_propagation(bench, counts)
            seen.values.append(seen_ms)
            overshoot.values.append(extra)
        except Exception as exc:
            attempt([seen, overshoot], f"limits propagation run {run_index + 1}", exc)
    for figure in cost.values():
        figure.note = f"{counts.publish_calls:,} timed calls a run"
    seen.note = overshoot.note = (
        f"{counts.limits_producers} producer processes at ~1k records/s each, default worker"
    )
    return [*cost.values(), seen, overshoot]


def measure_cost(bench: Bench, counts: Counts, enabled: bool) -> float:
    """``track.delay`` p50 (µs) in a fresh process, limits on or off."""
    bench.reset()
    queue = bench.unique("limits-cost")
    store = LimitStore(bench.redis, Keys(queue, f"{queue}-keys"))
    # Limits that do not stop the bench's record: the check runs to its end.
    store.write(
        DEFAULT_SOURCE,
        (limit("anthropic::claude-3-haiku"), limit("openai::gpt-4o", CUSTOMER_KEY)),
        issued_at=time.time(),
    )
    env = bench.aicm_env(queue, AICM_LIMITS_ENABLED="true" if enabled else "false")
    args = ["--kind", "aicm", "--calls", str(counts.publish_calls),
            "--warmup", str(counts.publish_warmup)]  # fmt: skip
    return float(run_producer(bench, "publish-cost", args, env)["p50_us"])


def measure_propagation(bench: Bench, counts: Counts) -> tuple[float, float]:
    """One trip: (ms until the slowest producer raised, records received after the trip)."""
    bench.reset()
    queue = bench.unique("limits-trip")
    with LimitsServer() as server:
        worker_name = bench.unique("limits-worker")
        worker = bench.spawn(
            celery_worker_args("aicm_tasks", worker_name),
            bench.aicm_env(
                queue,
                AICM_API_BASE=server.url,
                AICM_API_KEY=server.api_key,
                AICM_LIMITS_ENABLED="true",
            ),
            worker_name,
        )
        names = [bench.unique("limits-producer") for _ in range(counts.limits_producers)]
        env = bench.aicm_env(queue, AICM_LIMITS_ENABLED="true")
        producers = [
            bench.python(PRODUCER, ["publish", SERVICE_KEY, "0.001", "120"], env, name)
            for name in names
        ]
        try:
            logs = [bench.root / "logs" / f"{name}.log" for name in names]
            wait_until(
                lambda: all(p.exists() and "ready" in p.read_text() for p in logs),
                60,
                "every producer to publish",
            )
            server.state.trip_after = (
                server.state.counts.get(SERVICE_KEY, 0) + counts.limits_trip_after
            )
            for process in producers:
                process.wait(180)
            results = [_last_json(path.read_text()) for path in logs]
            published = sum(int(r["published"]) for r in results)
            wait_until(
                lambda: server.state.records >= published, 120, "the worker to deliver every record"
            )
        finally:
            for process in producers:
                bench.stop(process)
            bench.stop(worker)
        if any(r["raised_at"] is None for r in results):
            raise RuntimeError(f"a producer never raised: {results}")
        tripped_at = server.state.first_sent_at["tripped"]
        delays_ms = [(float(r["raised_at"]) - tripped_at) * 1000 for r in results]
        logger.info("limits: producers raised %s ms after the trip", [round(d) for d in delays_ms])
        return max(delays_ms), float(server.state.after_trip.get("tripped", 0))


def _last_json(text: str) -> dict[str, Any]:
    for line in reversed(text.strip().splitlines()):
        if line.startswith("{"):
            found: dict[str, Any] = json.loads(line)
            return found
    raise RuntimeError(f"no result line in {text[-500:]!r}")
