"""Scenario 3: sustained end-to-end throughput, two producer processes flat out.

aicm-tasks: one worker is started and warmed up; then two processes each call
``track.delay`` in a loop for a fixed count, starting at the same instant.
SDK: two processes, each with its own ``Tracker(delivery=PersistentDelivery)``
on one shared SQLite file (as users on one host would), each calling
``tracker.track`` in a loop; each process's delivery thread delivers (the SDK
has no separate worker).

Figure: records accepted by the stub ÷ (first publish → last new arrival).
"""

from __future__ import annotations

import logging
import subprocess
import time
from pathlib import Path
from typing import Any

from bench.anchors.sdk import write_ini
from bench.config import Counts
from bench.harness import Bench
from bench.sampling import TreeSampler
from bench.scenarios.common import (
    attempt,
    start_aicm_worker,
    start_producer,
    wait_result,
    warm_up_aicm,
)
from bench.stats import Figure

logger = logging.getLogger(__name__)

#: Producers: how many processes, and how far ahead their common start is set
#: (they import and connect first).
PRODUCERS = 2
START_LEAD_S = 3.0


def run(bench: Bench, counts: Counts) -> list[Figure]:
    """Both contenders ``counts.runs`` times, alternating."""
    figures = {
        "aicm": Figure("sustained.aicm", "sustained e2e: aicm-tasks, 2 producers + 1 worker",
                       "records/s"),
        "sdk": Figure("sustained.sdk", "sustained e2e: SDK PersistentDelivery, 2 producers",
                      "records/s"),
    }  # fmt: skip
    sizes = {"aicm": counts.sustained_aicm, "sdk": counts.sustained_sdk}
    for kind, figure in figures.items():
        figure.note = f"{PRODUCERS} x {sizes[kind]:,} records"
    for run_index in range(counts.runs):
        for kind, figure in figures.items():
            logger.info("sustained: %s, run %d/%d", kind, run_index + 1, counts.runs)
            try:
                rate, also = once(bench, kind, sizes[kind])
            except Exception as exc:
                attempt((figure,), f"sustained {kind} run {run_index + 1}", exc)
                continue
            figure.values.append(rate)
            figure.also.append(also)
    return list(figures.values())


def once(bench: Bench, kind: str, per_producer: int) -> tuple[float, dict[str, float]]:
    """One run: (accepted records/s, extras)."""
    bench.reset()
    total = PRODUCERS * per_producer
    worker: subprocess.Popen[bytes] | None = None
    sampler: TreeSampler | None = None
    producers: list[tuple[subprocess.Popen[bytes], Path]] = []
    args = ["--kind", kind, "--count", str(per_producer)]
    try:
        if kind == "aicm":
            queue = bench.unique("sustained")
            env = bench.aicm_env(queue)
            worker = start_aicm_worker(bench, queue)
            warm_up_aicm(bench, queue)
            sampler = TreeSampler(worker.pid).start()
        else:
            sdk_dir = bench.root / bench.unique("sdk-sustained")
            write_ini(sdk_dir, bench.stub_base_url)  # once, before two processes read it
            args += ["--sdk-dir", str(sdk_dir), "--api-base", bench.stub_base_url, "--linger"]
            env = bench.env()
        commands_before = bench.redis_commands()
        start_at = time.time() + START_LEAD_S
        producers = [
            start_producer(bench, "flood", [*args, "--start-at", repr(start_at)], env)
            for _ in range(PRODUCERS)
        ]
        timeout_s = max(120.0, per_producer / 200)
        results: list[dict[str, Any]] = [
            wait_result(bench, process, out, timeout_s) for process, out in producers
        ]
        stats = bench.stub.wait_for(total, timeout_s=timeout_s)
        commands = bench.redis_commands() - commands_before
    finally:
        if sampler is not None:
            sampler.stop()
        for process, _ in producers:
            bench.stop(process)
        if worker is not None:
            bench.stop(worker)
    first = min(r["first_publish"] for r in results)
    last_publish = max(r["last_publish"] for r in results)
    seconds = stats["last_new_arrival"] - first
    also = {
        "seconds": seconds,
        "publish rate/s": total / (last_publish - first),
        "drain lag s": stats["last_new_arrival"] - last_publish,
        "duplicates": stats["records"] - stats["unique"],
        "late start s": max(r["first_publish"] for r in results) - start_at,
    }
    if sampler is not None:  # aicm-tasks: what the worker and Redis spent per record
        also["worker CPU-ms/1k"] = sampler.cpu_used_s * 1e6 / total
        also["Redis cmds/record"] = commands / total
    return total / seconds, also
