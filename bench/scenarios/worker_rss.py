"""Scenario 5: the worker process tree's RSS while it drains a large backlog.

The backlog is filled with ``track_many`` in lists of ``counts.rss_prefill_chunk``;
then one aicm-tasks worker starts and psutil sums the RSS of its process and
all its children every 0.2 s, together with how many records the stub has.
Reported: peak RSS, RSS when 25/50/75/100 % were delivered, and growth from
25 % to 100 % as a share of the RSS at 25 % ("flat" = growth ≤ 10 %).
"""

from __future__ import annotations

import logging
import time

from bench.config import Counts
from bench.harness import Bench
from bench.sampling import TreeSampler, rss_at_fractions
from bench.scenarios.common import attempt, run_producer, start_aicm_worker
from bench.stats import Figure

logger = logging.getLogger(__name__)

FRACTIONS = (0.25, 0.50, 0.75, 1.00)


def run(bench: Bench, counts: Counts) -> list[Figure]:
    """``counts.runs`` drains of ``counts.rss_records`` records."""
    n = counts.rss_records
    peak = Figure("rss.aicm.peak_mb", f"worker tree peak RSS, draining {n:,}", "MB")
    growth = Figure("rss.aicm.growth_pct", "worker RSS growth 25%→100% drained", "%")
    peak.note = growth.note = f"{n:,} records, sampled every 0.2 s"
    for run_index in range(counts.runs):
        logger.info("rss: run %d/%d", run_index + 1, counts.runs)
        try:
            result = once(bench, counts)
        except Exception as exc:
            attempt((peak, growth), f"rss run {run_index + 1}", exc)
            continue
        peak.values.append(result.pop("peak"))
        growth.values.append(result.pop("growth"))
        peak.also.append(result)
    return [peak, growth]


def once(bench: Bench, counts: Counts) -> dict[str, float]:
    """Fill, drain while sampling; peak, growth and RSS at each fraction."""
    bench.reset()
    n = counts.rss_records
    queue = bench.unique("rss")
    args = ["--count", str(n), "--chunk", str(counts.rss_prefill_chunk)]
    run_producer(bench, "prefill-aicm", args, bench.aicm_env(queue))
    started = time.time()
    worker = start_aicm_worker(bench, queue)
    sampler = TreeSampler(worker.pid, probe=lambda: int(bench.stub.stats()["unique"])).start()
    try:
        stats = bench.stub.wait_for(n, timeout_s=max(120.0, n / 1000))
        samples = sampler.stop()
    finally:
        sampler.stop()
        bench.stop(worker)
    at = rss_at_fractions(samples, n, FRACTIONS)
    if 0.25 not in at or 1.0 not in at:
        raise RuntimeError("too few RSS samples to place 25 % and 100 % drained")
    result = {f"RSS@{int(f * 100)}% MB": mb for f, mb in at.items()}
    result.update(
        {
            "peak": sampler.peak_mb,
            "growth": (at[1.0] - at[0.25]) / at[0.25] * 100,
            "RSS@first delivery MB": next((x.rss_mb for x in samples if x.progress), 0.0),
            "drain rec/s": n / (stats["last_new_arrival"] - started),
            "samples": len(samples),
        }
    )
    return result
