"""The figures of every shard, read as one pipeline's (``status``, ``monitor``).

:func:`read_all_figures` reads :func:`~aicm_tasks.broker.figures.read_figures` on
each shard and merges the readings field by field, so a field added to
:class:`~aicm_tasks.broker.figures.Figures` merges with no change here when it
is a count (added), a dict of counts (added key by key) or a list (joined);
the few that are not sums are named below. Health is judged again on the
merged figures; what each shard's broker settings say is kept, naming the
shard when there are several.

The health marks (issue 13) are per shard, since each shard's scripts write
them on that shard's clock; merged, they judge the pipeline as one:

* delivered counts and rates are added; ``last_delivered_s_ago`` is the most
  recent delivery on any shard;
* **a stall** is records due on some shard and nothing delivered on any shard
  for the window: ``idle_s_ago`` is, over the shards with records due, the
  longest since one of them last found nothing due (and unknown when one of
  them never noted it, so the last delivery or the oldest record stands in);
  ``retrying_for_s`` is the longest run of retries on any shard, cut at the
  last delivery anywhere. A shard whose records wait while others deliver is
  not a stall; its records age, which ``--max-oldest-queued`` judges;
* a refused key is the longest run of 401/403 on any shard;
* a worker holds a lease on every shard and is listed once (by consumer id),
  as seen most recently.

A shard whose Redis does not answer makes the pipeline unhealthy, named
(``shard 1 did not answer ...``), while the other shards' figures are still
read and shown: an operator must never be told "healthy" when some records
cannot be reached, nor be shown nothing. Only when no shard answers does the
reading fail (:class:`~aicm_tasks.errors.ShardsDownError`; ``status`` exits 2).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from aicm_tasks.broker.errors import SHARD_ERRORS
from aicm_tasks.broker.figures import Figures, Thresholds, judge, read_figures
from aicm_tasks.broker.records import RecordStore
from aicm_tasks.errors import ShardsDownError

#: Fields where it is the smallest shard's (the most recent event anywhere).
SMALLEST = frozenset({"last_worker_seen_s_ago", "last_delivered_s_ago", "last_unauthorized_s_ago"})
#: Fields where it is the largest shard's (the longest run anywhere).
LARGEST = frozenset({"oldest_queued_s", "unauthorized_for_s"})
#: Fields every shard reads alike (one setting): the first shard's.
SAME = frozenset({"window_s"})
#: Lists that hold names, merged without repeats and sorted.
NAMES = frozenset({"workers_alive"})
#: Most entries kept in ``last_errors`` (as one shard's reading keeps).
LAST_ERRORS = 10


def read_all_figures(
    stores: Sequence[RecordStore], thresholds: Thresholds | None = None
) -> Figures:
    """Every shard's figures as one pipeline's; one shard's reading unchanged.

    A shard that does not answer is a problem named after it and left out of
    the counts (listed in ``shards_down``); raises :class:`ShardsDownError`
    when none answers, and one shard's own error when it is the only shard."""
    thresholds = thresholds or Thresholds()
    if len(stores) == 1:
        return read_figures(stores[0], thresholds)
    readings: list[Figures] = []
    shards: list[int] = []
    down: dict[int, str] = {}
    for store in stores:
        try:
            readings.append(read_figures(store, thresholds))
        except SHARD_ERRORS as exc:
            down[store.keys.shard] = str(exc) or type(exc).__name__
            continue
        shards.append(store.keys.shard)
    if not readings:
        raise ShardsDownError(
            "no shard answered: " + "; ".join(f"shard {n}: {why}" for n, why in down.items()),
            down,
        )
    merged = merge_figures(readings, shards, thresholds)
    merged.shards_down.update({str(n): why for n, why in down.items()})
    # First: the one reason that hides others (the missing shard's stall, its
    # dead letters, its workers' leases).
    merged.problems[:0] = [
        f"shard {n} did not answer (its records are not counted here): {why}"
        for n, why in down.items()
    ]
    return merged


def merge_figures(
    readings: Sequence[Figures], shards: Sequence[int], thresholds: Thresholds
) -> Figures:
    """One reading from several shards' (in shard order)."""
    values: dict[str, Any] = {}
    for field in dataclasses.fields(Figures):
        name = field.name
        if name in ("problems", "warnings", "redis_settings", "shards_down"):
            continue
        values[name] = _merge(name, [getattr(r, name) for r in readings])
    values["workers"] = _workers(readings)
    values["idle_s_ago"] = _idle_s_ago(readings)
    values["retrying_for_s"] = _retrying_for_s(readings, values["last_delivered_s_ago"])
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


def _workers(readings: Sequence[Figures]) -> list[dict[str, Any]]:
    """Every worker once (it holds a lease per shard), as seen most recently."""
    latest: dict[str, dict[str, Any]] = {}
    for reading in readings:
        for worker in reading.workers:
            known = latest.get(worker["consumer"])
            if known is None or worker["seen_s_ago"] < known["seen_s_ago"]:
                latest[worker["consumer"]] = worker
    return sorted(latest.values(), key=lambda w: (w["seen_s_ago"], w["name"]))


def _idle_s_ago(readings: Sequence[Figures]) -> float | None:
    """Over the shards with records due, the longest since one last found nothing
    due (None when one never noted it); with none due, the most recent note."""
    due = [r.idle_s_ago for r in readings if r.due > 0]
    if due:
        return None if None in due else max(s for s in due if s is not None)
    known = [r.idle_s_ago for r in readings if r.idle_s_ago is not None]
    return min(known) if known else None


def _retrying_for_s(
    readings: Sequence[Figures], last_delivered_s_ago: float | None
) -> float | None:
    """The longest run of retries on any shard, cut at the last delivery anywhere."""
    runs = [r.retrying_for_s for r in readings if r.retrying_for_s is not None]
    if not runs:
        return None
    longest = max(runs)
    return longest if last_delivered_s_ago is None else min(longest, last_delivered_s_ago)


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
    if name in SAME:
        return first
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
