"""What settles a batch: the writes the broker applies in one atomic step.

A plain value, apart from :mod:`aicm_tasks.broker.records` (which needs redis)
so that the worker's pure planning (:mod:`aicm_tasks.worker.delivery`) can build
one without importing a Redis client.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Resolution:
    """What to write when a batch's fate is final.

    ``retries`` are ``(delay_s, message)``: due that many seconds after the
    settle, on the Redis server's clock. ``dead_letters`` are ``(id, entry_json)``,
    indexed at the server's time of the settle. ``stats`` are counter increments.

    What ``status`` judges health by rides in the same step (no extra round
    trip on the worker's hot path): ``rates`` are increments of the rate bucket
    of the settle's second (``keys.RATE_*`` fields), and ``noted``,
    ``started`` and ``ended`` name fields of the health hash (``keys.IDLE_AT``
    and the like) set to the server's time, set only if absent (the start of
    a run of failures), or removed (the run ended). Cost: a few HINCRBY/HSET
    per batch (not per record) inside the script; measured, the RESOLVE round
    trip's median stayed 44-58 µs with and without them (the difference is
    below the noise), and the separate pipeline the worker used to send per
    batch for the rate buckets (one round trip) is gone.
    """

    retries: Sequence[tuple[float, bytes]] = ()
    dead_letters: Sequence[tuple[str, str]] = ()
    stats: dict[str, int] | None = None
    rates: dict[str, int] | None = None
    noted: tuple[str, ...] = ()
    started: tuple[str, ...] = ()
    ended: tuple[str, ...] = ()
