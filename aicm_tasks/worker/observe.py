"""What the delivery service tells the outside world, and who listens.

:class:`DeliveryService` calls every :class:`Observer` after each POST, each
settled batch and each housekeeping round. Observers: Celery task events for
Flower (:mod:`aicm_tasks.worker.events`), Prometheus metrics (:mod:`aicm_tasks.worker.metrics`)
and the figures (and the broker's settings, see :mod:`aicm_tasks.broker.redis_settings`) ``aicm-tasks status`` and ``monitor`` read from Redis
(:class:`RedisFigures`, here).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from aicm_tasks.broker.keys import Keys
from aicm_tasks.broker.messages import Item
from aicm_tasks.broker.records import BrokerClient
from aicm_tasks.broker.redis_settings import BrokerSettings, Finding
from aicm_tasks.worker.delivery import Summary

logger = logging.getLogger(__name__)

#: Recent delivery errors kept for the monitor.
LAST_ERRORS = 20


@dataclass(frozen=True, slots=True)
class BatchReport:
    """One settled batch: its counts, its records and how long it took."""

    batch_key: str
    summary: Summary
    elapsed_s: float
    items: Sequence[Item]


class Observer:
    """Receives what the delivery service does; must be quick. Each method does
    nothing here: an observer overrides the ones it cares about."""

    def request_done(self, http_status: int | None, seconds: float) -> None:
        """After each POST: its HTTP status (None: no response) and its duration."""

    def batch_settled(self, report: BatchReport) -> None:
        """After each batch's fate was written to Redis."""

    def housekeeping(self, depth: dict[str, int]) -> None:
        """Every few housekeeping rounds: the queue depth, held, scheduled, dead letters."""

    def shard_depth(self, shard: int, depth: dict[str, int]) -> None:
        """With several shards, beside :meth:`housekeeping`: one shard's depth."""

    def shard_answered(self, shard: int, answered: bool) -> None:
        """With several shards, after each housekeeping round on a shard: whether
        its Redis answered (a shard backing off stays as it was last told)."""

    def redis_settings_read(
        self, settings: BrokerSettings, findings: list[Finding], shard: int = 0
    ) -> None:
        """After each reading of the broker's eviction and persistence settings:
        those of the Redis that holds ``shard`` (each shard's is read in turn)."""


class Observers(Observer):
    """Every observer, called in turn. One that raises is logged and the others
    still hear: a broken metrics exporter must never stop a delivery."""

    def __init__(self, observers: Sequence[Observer] = ()) -> None:
        self.observers = tuple(observers)

    def __bool__(self) -> bool:
        return bool(self.observers)

    def _each(self, call: Callable[[Observer], None], what: str) -> None:
        for observer in self.observers:
            try:
                call(observer)
            except Exception:
                logger.exception("observer %s failed in %s", type(observer).__name__, what)

    def request_done(self, http_status: int | None, seconds: float) -> None:
        self._each(lambda o: o.request_done(http_status, seconds), "request_done")

    def batch_settled(self, report: BatchReport) -> None:
        self._each(lambda o: o.batch_settled(report), "batch_settled")

    def housekeeping(self, depth: dict[str, int]) -> None:
        self._each(lambda o: o.housekeeping(depth), "housekeeping")

    def shard_depth(self, shard: int, depth: dict[str, int]) -> None:
        self._each(lambda o: o.shard_depth(shard, depth), "shard_depth")

    def shard_answered(self, shard: int, answered: bool) -> None:
        self._each(lambda o: o.shard_answered(shard, answered), "shard_answered")

    def redis_settings_read(
        self, settings: BrokerSettings, findings: list[Finding], shard: int = 0
    ) -> None:
        self._each(
            lambda o: o.redis_settings_read(settings, findings, shard), "redis_settings_read"
        )


class RedisFigures(Observer):
    """Writes the last delivery errors to Redis for status/monitor.

    The rate buckets and health times status judges by are written by the
    RESOLVE script that settles each batch (on the server's clock, in the same
    round trip): see :class:`aicm_tasks.broker.resolution.Resolution`.
    """

    def __init__(
        self,
        client: BrokerClient,
        keys: Keys,
        shards: Sequence[tuple[BrokerClient, Keys]] = (),
    ) -> None:
        """``client``/``keys``: where the last errors go (shard 0); ``shards``:
        each shard's client and keys, in shard order, for its Redis's settings."""
        self.client = client
        self.keys = keys
        self.shards = list(shards) or [(client, keys)]

    def batch_settled(self, report: BatchReport) -> None:
        summary = report.summary
        dead = sum(summary.dead_lettered.values())
        if not (summary.retried or dead):
            return
        error = {
            "at": time.time(),
            "detail": summary.retry_detail or f"dead-lettered {summary.dead_lettered}",
            "retried": summary.retried,
            "dead_lettered": summary.dead_lettered,
        }
        with self.client.pipeline(transaction=False) as pipe:
            pipe.lpush(self.keys.errors, json.dumps(error))
            pipe.ltrim(self.keys.errors, 0, LAST_ERRORS - 1)
            pipe.execute()

    def redis_settings_read(
        self, settings: BrokerSettings, findings: list[Finding], shard: int = 0
    ) -> None:
        """Keep what the worker read, for a ``status`` that may not run CONFIG
        itself: in the shard's own keyspace, on the Redis it describes (``status``
        reads each shard's there)."""
        client, keys = self.shards[shard]
        key = keys.redis_settings
        with client.pipeline(transaction=True) as pipe:
            pipe.delete(key)
            # redis-py's hint wants Mapping[str | bytes | ..., ...]; a dict[str, str] is one.
            pipe.hset(key, mapping=settings.as_hash())  # type: ignore[arg-type]
            pipe.execute()
