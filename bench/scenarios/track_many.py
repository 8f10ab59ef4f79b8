"""Scenario 6: ``track_many(records)`` publish rate on lists of ``counts.many_batch`` records.

A fresh producer process builds its lists first (the caller's data), makes one
untimed call, then times ``counts.many_batches`` calls. No worker runs.
"""

from __future__ import annotations

import logging

from bench.config import Counts
from bench.harness import Bench
from bench.scenarios.common import attempt, run_producer
from bench.stats import Figure

logger = logging.getLogger(__name__)


def run(bench: Bench, counts: Counts) -> list[Figure]:
    """``counts.runs`` timed runs of ``track_many``."""
    figure = Figure("track_many.aicm", f"track_many, lists of {counts.many_batch:,}", "records/s")
    figure.note = f"{counts.many_batches} lists a run"
    for run_index in range(counts.runs):
        logger.info("track_many: run %d/%d", run_index + 1, counts.runs)
        bench.reset()
        queue = bench.unique("many")
        args = ["--batch", str(counts.many_batch), "--batches", str(counts.many_batches)]
        try:
            result = run_producer(bench, "track-many", args, bench.aicm_env(queue))
        except Exception as exc:
            attempt((figure,), f"track_many run {run_index + 1}", exc)
            continue
        figure.values.append(result["records_per_s"])
        figure.also.append({"µs/record": 1e6 / result["records_per_s"]})
    return [figure]
