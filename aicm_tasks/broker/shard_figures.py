"""The figures of every shard, read as one pipeline's (``status``, ``monitor``).

:func:`read_all_figures` reads :func:`~aicm_tasks.broker.figures.read_figures` on
each shard and merges the readings field by field, so a field added to
:class:`~aicm_tasks.broker.figures.Figures` merges with no change here when it
is a count (added), a dict of counts (added key by key) or a list (joined);
the few that are not sums are named below. Health is judged again on the
merged figures; what each shard's broker settings say is kept, naming the
shard when there are several.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from aicm_tasks.broker.figures import Figures, Thresholds, judge, read_figures
from aicm_tasks.broker.records import RecordStore

#: Fields where the pipeline's figure is the largest shard's (the oldest record).
LARGEST = frozenset({"oldest_queued_s"})
#: Fields where it is the smallest shard's (the worker seen most recently).
SMALLEST = frozenset({"last_worker_seen_s_ago"})
#: Lists that hold names, merged without repeats and sorted.
NAMES = frozenset({"workers_alive"})
#: Most entries kept in ``last_errors`` (as one shard's reading keeps).
LAST_ERRORS = 10


def read_all_figures(
    stores: Sequence[RecordStore], thresholds: Thresholds | None = None
) -> Figures:
    """Every shard's figures as one pipeline's; one shard's reading unchanged."""
    thresholds = thresholds or Thresholds()
    readings = [read_figures(store, thresholds) for store in stores]
    if len(readings) == 1:
        return readings[0]
    return merge_figures(readings, [store.keys.shard for store in stores], thresholds)


def merge_figures(
    readings: Sequence[Figures], shards: Sequence[int], thresholds: Thresholds
) -> Figures:
    """One reading from several shards' (in shard order)."""
    values: dict[str, Any] = {}
    for field in dataclasses.fields(Figures):
        name = field.name
        if name in ("problems", "warnings", "redis_settings"):
            continue
        values[name] = _merge(name, [getattr(r, name) for r in readings])
    values["last_errors"] = sorted(
        values["last_errors"], key=lambda e: -float(e.get("at", 0) or 0)
    )[:LAST_ERRORS]
    merged = Figures(**values)
    # The first shard's reading where one is shown (the monitor's lines), and
    # every shard's under "shards".
    merged.redis_settings.update(readings[0].redis_settings)
    merged.redis_settings["shards"] = {
        str(shard): reading.redis_settings for shard, reading in zip(shards, readings, strict=True)
    }
    for shard, reading in zip(shards, readings, strict=True):
        own = judge(reading, thresholds)
        merged.problems.extend(_named(shard, p) for p in reading.problems if p not in own)
        merged.warnings.extend(_named(shard, w) for w in reading.warnings)
    merged.problems.extend(judge(merged, thresholds))
    return merged


def _named(shard: int, message: str) -> str:
    return f"shard {shard}: {message}"


def _merge(name: str, values: list[Any]) -> Any:
    known = [v for v in values if v is not None]
    if not known:
        return None
    first = known[0]
    if name in LARGEST:
        return max(known)
    if name in SMALLEST:
        return min(known)
    if isinstance(first, bool):
        return all(known)
    if isinstance(first, int | float):
        return round(sum(known), 1) if isinstance(first, float) else sum(known)
    if isinstance(first, dict):
        merged: dict[str, Any] = {}
        for value in known:
            for key, item in value.items():
                merged[key] = _merge(key, [merged.get(key), item])
        return merged
    if isinstance(first, list):
        joined = [item for value in known for item in value]
        return sorted(set(joined)) if name in NAMES else joined
    return first
