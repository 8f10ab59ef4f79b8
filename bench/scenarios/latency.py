"""Scenario 4: end-to-end latency, publish → accepted by the stub, at a steady offered load.

One warmed-up aicm-tasks worker (default settings); one producer process calls
``track.delay`` at ``counts.latency_rate`` records/s for
``counts.latency_duration_s`` on an absolute schedule (call i due at
start + i/rate), stamping each ``response_id`` with its publish time just
before the call. Latency = the stub's first arrival − publish time (same
machine, same wall clock).
"""

# ruff: noqa: RUF002, RUF003  (en dashes, ×, µ and – are meant)

from __future__ import annotations

import logging
import time

from bench.config import Counts
from bench.harness import Bench
from bench.scenarios.common import (
    attempt,
    start_aicm_worker,
    start_producer,
    wait_result,
    warm_up_aicm,
)
from bench.stats import Figure
from bench.stub_client import StubStalledError

logger = logging.getLogger(__name__)

START_LEAD_S = 2.0


def run(bench: Bench, counts: Counts) -> list[Figure]:
    """``counts.runs`` paced runs; figures p50 and p99 in ms."""
    rate, duration = counts.latency_rate, counts.latency_duration_s
    label = f"e2e latency at {rate:,}/s (aicm-tasks)"
    p50 = Figure("latency.aicm.p50_ms", f"{label} p50", "ms")
    p99 = Figure("latency.aicm.p99_ms", f"{label} p99", "ms")
    p50.note = p99.note = f"{rate:,} records/s for {duration:.0f} s a run"
    for run_index in range(counts.runs):
        logger.info("latency: run %d/%d", run_index + 1, counts.runs)
        try:
            summary = once(bench, counts)
        except Exception as exc:
            attempt((p50, p99), f"latency run {run_index + 1}", exc)
            continue
        p50.values.append(summary["p50_ms"])
        p99.values.append(summary["p99_ms"])
        p50.also.append(
            {
                "max ms": summary["max_ms"],
                "offered/s": summary["offered_per_s"],
                "missing": summary["missing"],
                "late calls": summary["late_calls"],
                "Redis cmds/record": summary["redis_per_record"],
            }
        )
    return [p50, p99]


def once(bench: Bench, counts: Counts) -> dict[str, float]:
    """One paced run against a running worker."""
    bench.reset()
    queue = bench.unique("latency")
    worker = start_aicm_worker(bench, queue)
    try:
        warm_up_aicm(bench, queue)
        commands_before = bench.redis_commands()
        start_at = time.time() + START_LEAD_S
        args = ["--rate", str(counts.latency_rate), "--duration", str(counts.latency_duration_s),
                "--start-at", repr(start_at)]  # fmt: skip
        process, out = start_producer(bench, "paced", args, bench.aicm_env(queue))
        result = wait_result(bench, process, out, counts.latency_duration_s + 60)
        published: dict[str, float] = result["published"]
        try:
            bench.stub.wait_for(len(published), timeout_s=60, stall_s=15)
        except StubStalledError as exc:  # report what arrived; the rest count as missing
            logger.warning("latency run incomplete: %s", exc)
        commands = bench.redis_commands() - commands_before
    finally:
        bench.stop(worker)
    summary = bench.stub.latency(published)
    return {
        **summary,
        "offered_per_s": result["offered_per_s"],
        "late_calls": result["late_calls"],
        "redis_per_record": commands / max(1, len(published)),
    }
