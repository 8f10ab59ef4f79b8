"""The pipeline's figures at a glance, read from Redis, and judged.

Read from Redis only (no worker needs to answer): queue depth, records held by
workers and waiting for a retry, what was delivered over the last 5 s and the
last minute, what happened over the health window (records, and POSTs by how
they went), dead letters by reason, the last delivery errors, which workers
renewed their lease recently (by their Celery hostname, as Flower names them),
and the broker's eviction and persistence settings (read directly, or as a
worker last read them when this client may not). Every time is the Redis
server's: workers write them there (``broker/lua/_now.lua``), so a status run
on a host whose clock is off still reads them right. ``aicm-tasks status`` and
``aicm-tasks monitor`` show these; :mod:`aicm_tasks.broker.health` judges them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

from aicm_tasks.broker.health import ALIVE_WITHIN_S, Figures, Thresholds, judge
from aicm_tasks.broker.keys import (
    IDLE_AT,
    LAST_DELIVERED_AT,
    LAST_UNAUTHORIZED_AT,
    RATE_BUCKET_S,
    RATE_DEAD_LETTERED,
    RATE_DELIVERED,
    RATE_KEEP_S,
    RATE_REQUESTS,
    RATE_RETRIED,
    RATE_TRANSPORT_FAILED,
    RATE_UNAUTHORIZED,
    RETRYING_SINCE,
    UNAUTHORIZED_SINCE,
    dead_lettered_by_reason,
)
from aicm_tasks.broker.messages import decode, record_of
from aicm_tasks.broker.records import RecordStore
from aicm_tasks.broker.redis_settings import UNKNOWN, BrokerSettings, judge_settings, read_settings

# Figures, Thresholds and judge live in health.py; callers name them from here too.
__all__ = ["ALIVE_WITHIN_S", "Figures", "Thresholds", "judge", "read_figures", "redis_settings_of"]

#: The spans ``monitor`` shows the delivery rate over, in seconds.
NOW_SPAN_S = 5
MINUTE_S = 60
#: What ``recent`` counts over the health window.
RECENT_FIELDS = (
    RATE_DELIVERED,
    RATE_RETRIED,
    RATE_DEAD_LETTERED,
    RATE_REQUESTS,
    RATE_TRANSPORT_FAILED,
    RATE_UNAUTHORIZED,
)


def read_figures(store: RecordStore, thresholds: Thresholds | None = None) -> Figures:
    """Read every figure once and judge health against ``thresholds``."""
    thresholds = thresholds or Thresholds()
    now = store.server_time()
    depth = store.depth()
    stats = store.stats()
    client = store.client
    # One bucket per RATE_BUCKET_S: the current, partial one and those before
    # it back over the longest span asked for (buckets live RATE_KEEP_S).
    window_s = min(thresholds.window_s, float(RATE_KEEP_S))
    current = int(now // RATE_BUCKET_S)
    back = math.ceil(max(window_s, MINUTE_S) / RATE_BUCKET_S)
    with client.pipeline(transaction=False) as pipe:
        for n in range(back + 1):
            pipe.hgetall(store.keys.rate(current - n))
        pipe.lindex(store.keys.queue, -1)
        pipe.lrange(store.keys.errors, 0, 9)
        pipe.hgetall(store.keys.health)
        pipe.hgetall(store.keys.names)
        pipe.zcount(store.keys.scheduled, "-inf", now)
        *raw_buckets, oldest_raw, errors_raw, health_raw, names_raw, due = pipe.execute()
    buckets = [{_text(k): int(v) for k, v in b.items()} for b in raw_buckets]
    # The current bucket is partial: a span of S seconds counts the S / RATE_BUCKET_S
    # whole buckets before it plus the current one, over the time they really span.
    partial_s = now - current * RATE_BUCKET_S
    minute = _sum(buckets, MINUTE_S, RATE_DELIVERED)
    last_5s = _sum(buckets, NOW_SPAN_S, RATE_DELIVERED)
    health = {_text(k): float(v) for k, v in health_raw.items()}
    names = {_text(k): _text(v) for k, v in names_raw.items()}
    workers = _workers(store.last_seen(), names, now, thresholds.no_worker_s)
    seen_ago = [w["seen_s_ago"] for w in workers]

    def ago(field: str) -> float | None:
        return round(max(0.0, now - health[field]), 1) if field in health else None

    figures = Figures(
        queued=depth["queued"],
        held=depth["held"],
        scheduled=depth["scheduled"],
        dead_letters=depth["dead_letters"],
        dead_letters_by_reason=dead_lettered_by_reason(stats),
        delivered_last_minute=minute,
        delivered_per_s=round(minute / (MINUTE_S + partial_s), 1),
        delivered_last_5s=last_5s,
        delivered_per_s_last_5s=round(last_5s / (NOW_SPAN_S + partial_s), 1),
        workers_alive=[w["name"] for w in workers if w["alive"]],
        workers=workers,
        last_worker_seen_s_ago=min(seen_ago) if seen_ago else None,
        oldest_queued_s=_age_s(oldest_raw, now),
        totals=stats,
        last_errors=[json.loads(e) for e in errors_raw],
        window_s=window_s,
        recent={f: _sum(buckets, math.ceil(window_s), f) for f in RECENT_FIELDS},
        last_delivered_s_ago=ago(LAST_DELIVERED_AT),
        idle_s_ago=ago(IDLE_AT),
        scheduled_due=int(due),
        retrying_for_s=ago(RETRYING_SINCE),
        unauthorized_for_s=ago(UNAUTHORIZED_SINCE),
        last_unauthorized_s_ago=ago(LAST_UNAUTHORIZED_AT),
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


def _sum(buckets: Sequence[dict[str, int]], span_s: int, field: str) -> int:
    """``field`` summed over the current bucket and the span's whole buckets before it."""
    return sum(b.get(field, 0) for b in buckets[: span_s // RATE_BUCKET_S + 1])


def _workers(
    seen: dict[str, float], names: dict[str, str], now: float, alive_within_s: float
) -> list[dict[str, Any]]:
    """Every worker seen, most recently seen first: its Celery hostname (as Flower
    names it; the consumer id when it gave none), consumer id, and whether alive."""
    workers = [
        {
            "name": names.get(consumer) or consumer,
            "consumer": consumer,
            "seen_s_ago": round(max(0.0, now - at), 1),
            "alive": now - at <= alive_within_s,
        }
        for consumer, at in seen.items()
    ]
    return sorted(workers, key=lambda w: (w["seen_s_ago"], w["name"]))


def _age_s(raw: bytes | None, now: float) -> float | None:
    """How long the record next in line has waited since it was enqueued: from its
    ``enqueued_at`` metadata (a backfill, a replay), else from its own
    ``timestamp``, which the producer stamped when it enqueued it. Both are the
    producer's clock: a producer off by X s shifts this by X s (never below 0)."""
    if raw is None:
        return None
    item = decode(raw)
    enqueued_at = item.meta.get("enqueued_at") if item.meta else None
    try:
        if enqueued_at is None:
            enqueued_at = (record_of(item) or {})["timestamp"]
        return round(max(0.0, now - float(enqueued_at)), 1)
    except (KeyError, TypeError, ValueError):
        return None


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
