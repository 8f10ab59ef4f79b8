"""Scenario 1: publish cost per call, p50 and p99, of the four ways to hand off a record.

``track.delay`` vs plain Celery ``.delay`` of the same record vs the SDK's
``Tracker.track`` with ``PersistentDelivery`` vs raw redis-py ``LPUSH`` of the
record's JSON. Each runs in a fresh producer process against the same private
Redis (no worker consuming; the SDK's own delivery thread runs, as it always
does), after untimed warm-up calls. The contenders alternate within each run so
machine noise spreads over all of them.
"""

from __future__ import annotations

import logging

from bench.config import Counts
from bench.harness import Bench
from bench.scenarios.common import attempt, run_producer
from bench.stats import Figure

logger = logging.getLogger(__name__)

LABELS = {
    "aicm": "track.delay (aicm-tasks)",
    "celery": "plain Celery .delay",
    "sdk": "SDK Tracker.track (PersistentDelivery)",
    "lpush": "raw redis-py LPUSH",
}


def run(bench: Bench, counts: Counts) -> list[Figure]:
    """Measure every contender ``counts.runs`` times; two figures each (p50, p99)."""
    figures: dict[str, tuple[Figure, Figure]] = {
        kind: (
            Figure(f"publish.{kind}.p50_us", f"{label} p50", "µs/call"),
            Figure(f"publish.{kind}.p99_us", f"{label} p99", "µs/call"),
        )
        for kind, label in LABELS.items()
    }
    for run_index in range(counts.runs):
        for kind in LABELS:
            p50, p99 = figures[kind]
            logger.info("publish: %s, run %d/%d", kind, run_index + 1, counts.runs)
            try:
                result = measure(bench, kind, counts)
            except Exception as exc:
                attempt((p50, p99), f"publish {kind} run {run_index + 1}", exc)
                continue
            also = {
                "calls/s": result["calls_per_s"],
                "mean µs": result["mean_us"],
                "max ms": result["max_us"] / 1000,
                "calls >50ms": result["over_50ms"],
            }
            p50.values.append(result["p50_us"])
            p99.values.append(result["p99_us"])
            p50.also.append(also)
    for p50, p99 in figures.values():
        p99.note = p50.note = f"{counts.publish_calls:,} timed calls a run"
    return [figure for pair in figures.values() for figure in pair]


def measure(bench: Bench, kind: str, counts: Counts) -> dict[str, float]:
    """One run of one contender in its own producer process."""
    bench.reset()
    queue = bench.unique(f"publish-{kind}")
    args = ["--kind", kind, "--calls", str(counts.publish_calls),
            "--warmup", str(counts.publish_warmup)]  # fmt: skip
    if kind == "aicm":
        env = bench.aicm_env(queue)
    elif kind == "sdk":
        sdk_dir = bench.root / bench.unique("sdk-publish")
        args += ["--sdk-dir", str(sdk_dir), "--api-base", bench.stub_base_url]
        env = bench.env()
    else:
        env = bench.anchor_env(queue)
    return run_producer(bench, "publish-cost", args, env)
