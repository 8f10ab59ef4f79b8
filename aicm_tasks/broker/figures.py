"""The pipeline's figures at a glance, and whether it is healthy.

Read from Redis only (no worker needs to answer): queue depth, records held by
workers and waiting for a retry, the delivery rate over the last minute, dead
letters by reason, the last delivery errors, which workers renewed their
lease recently, and the broker's eviction and persistence settings (read
directly, or as a worker last read them when this client may not). ``aicm-tasks status`` and ``aicm-tasks monitor`` show these.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from aicm_tasks.broker.keys import RATE_BUCKET_S, dead_lettered_by_reason
from aicm_tasks.broker.messages import decode, record_of
from aicm_tasks.broker.records import RecordStore
from aicm_tasks.broker.redis_settings import UNKNOWN, BrokerSettings, judge_settings, read_settings

#: A worker that renewed its lease within this many seconds counts as alive.
ALIVE_WITHIN_S = 60.0


@dataclass(frozen=True)
class Thresholds:
    """When ``status`` calls the pipeline unhealthy."""

    no_worker_s: float = ALIVE_WITHIN_S
    max_oldest_queued_s: float = 300.0
    max_dead_letters: int | None = None


@dataclass(frozen=True)
class Figures:
    """One reading of the pipeline."""

    queued: int
    held: int
    scheduled: int
    dead_letters: int
    dead_letters_by_reason: dict[str, int]
    delivered_last_minute: int
    delivered_per_s: float
    workers_alive: list[str]
    last_worker_seen_s_ago: float | None
    oldest_queued_s: float | None
    totals: dict[str, int]
    last_errors: list[dict[str, Any]]
    #: The broker's eviction and persistence settings (see redis_settings.py).
    redis_settings: dict[str, Any] = field(default_factory=dict)
    #: What deserves a look but does not make the pipeline unhealthy (AOF off).
    warnings: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        figures = dict(self.__dict__)
        figures["healthy"] = self.healthy
        return figures


def read_figures(store: RecordStore, thresholds: Thresholds | None = None) -> Figures:
    """Read every figure once and judge health against ``thresholds``."""
    thresholds = thresholds or Thresholds()
    # The Redis server's clock: workers note when they were seen on it, so a
    # status run on a host whose clock is off still judges them right.
    now = store.server_time()
    depth = store.depth()
    stats = store.stats()
    client = store.client
    current = int(now // RATE_BUCKET_S)
    buckets = [store.keys.rate(current - n) for n in range(int(60 // RATE_BUCKET_S) + 1)]
    with client.pipeline(transaction=False) as pipe:
        for key in buckets:
            pipe.hget(key, "delivered")
        pipe.lindex(store.keys.queue, -1)
        pipe.lrange(store.keys.errors, 0, 9)
        *rates, oldest_raw, errors_raw = pipe.execute()
    # The current bucket is partial: count the six before it plus the current one,
    # over the time they really span.
    delivered = sum(int(r or 0) for r in rates)
    span_s = 60.0 + (now - current * RATE_BUCKET_S)
    seen = store.last_seen()
    alive = sorted(name for name, at in seen.items() if now - at <= thresholds.no_worker_s)
    last_seen_ago = now - max(seen.values()) if seen else None
    figures = Figures(
        queued=depth["queued"],
        held=depth["held"],
        scheduled=depth["scheduled"],
        dead_letters=depth["dead_letters"],
        dead_letters_by_reason=dead_lettered_by_reason(stats),
        delivered_last_minute=delivered,
        delivered_per_s=round(delivered / span_s, 1),
        workers_alive=alive,
        last_worker_seen_s_ago=None if last_seen_ago is None else round(last_seen_ago, 1),
        oldest_queued_s=_age_s(oldest_raw, now),
        totals=stats,
        last_errors=[json.loads(e) for e in errors_raw],
    )
    settings = redis_settings_of(store)
    figures.redis_settings.update(settings.as_hash())
    for finding in judge_settings(settings):
        (figures.problems if finding.level == "error" else figures.warnings).append(finding.message)
    figures.problems.extend(judge(figures, thresholds))
    return figures


def redis_settings_of(store: RecordStore) -> BrokerSettings:
    """The broker's settings read now, or, when this client may run neither CONFIG
    nor INFO, as a worker last read and stored them."""
    settings = read_settings(store.server_client(), read_by="status")
    if settings.source != UNKNOWN:
        return settings
    stored = BrokerSettings.from_hash(store.client.hgetall(store.keys.redis_settings))
    if stored is None or stored.source == UNKNOWN:
        return settings
    return stored


def judge(figures: Figures, thresholds: Thresholds) -> list[str]:
    """The reasons the pipeline is unhealthy (empty: healthy)."""
    problems = []
    if not figures.workers_alive:
        since = (
            "never seen"
            if figures.last_worker_seen_s_ago is None
            else f"last seen {figures.last_worker_seen_s_ago:.0f}s ago"
        )
        problems.append(f"no worker alive for {thresholds.no_worker_s:.0f}s ({since})")
    if (
        figures.oldest_queued_s is not None
        and figures.oldest_queued_s > thresholds.max_oldest_queued_s
    ):
        problems.append(
            f"oldest queued record is {figures.oldest_queued_s:.0f}s old "
            f"(threshold {thresholds.max_oldest_queued_s:.0f}s)"
        )
    if (
        thresholds.max_dead_letters is not None
        and figures.dead_letters > thresholds.max_dead_letters
    ):
        problems.append(
            f"{figures.dead_letters} dead letters (threshold {thresholds.max_dead_letters})"
        )
    return problems


def _age_s(raw: bytes | None, now: float) -> float | None:
    """Age of a queued record from its own timestamp (when it was tracked)."""
    if raw is None:
        return None
    record = record_of(decode(raw))
    try:
        return round(max(0.0, now - float((record or {})["timestamp"])), 1)
    except (KeyError, TypeError, ValueError):
        return None
