"""The producer's path to the broker: one LPUSH of the record's bytes.

This bypasses Celery's message building on purpose. A plain ``.delay`` spends
most of its time building a printable copy of the arguments and a protocol-2
envelope (and kombu 5.7 builds a new Redis client per publish); the worker
reads records in bulk straight from the Redis list, so it needs none of that.
The list is still the Celery queue named in the app's ``task_queues``, so
Celery and Flower tools see its length.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from collections.abc import Sequence

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from aicm_tasks.broker.keys import Keys
from aicm_tasks.broker.records import RecordStore
from aicm_tasks.errors import PublishError
from aicm_tasks.producer.record import Record
from aicm_tasks.producer.spool import Spool
from aicm_tasks.redact import redact_url
from aicm_tasks.settings import Settings

logger = logging.getLogger(__name__)


class Publisher:
    """Publishes validated records; one per process is enough (redis-py's pool
    is thread-safe and resets itself in a forked child)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._store: RecordStore | None = None
        self._lock = threading.Lock()
        self.spool: Spool | None = Spool.for_settings(settings) if settings.spool_enabled else None
        self._spooling = False
        self._checked_leftovers_pid = -1

    @property
    def store(self) -> RecordStore:
        """The broker store, connected on first use."""
        store = self._store
        if store is None:
            with self._lock:
                if self._store is None:
                    self._store = RecordStore(
                        producer_client(self.settings),
                        Keys(self.settings.queue, self.settings.key_prefix),
                    )
                store = self._store
        return store

    def publish(self, record: Record, *, due_epoch_s: float | None = None) -> None:
        """Put one record on the queue (or in the scheduled set when ``due_epoch_s``).

        When the broker does not answer, the record goes to the spool (if enabled)
        and this returns normally; :class:`PublishError` only when it cannot.
        """
        if self._checked_leftovers_pid != os.getpid():
            self._resume_leftovers()
        try:
            if due_epoch_s is None:
                self.store.push(record.message)
            else:
                self.store.schedule([(due_epoch_s, record.message)])
        except redis.RedisError as exc:
            self._fallback([record], exc, due_epoch_s)
            return
        self._spooling = False

    def publish_many(self, records: Sequence[Record]) -> None:
        """Put many records on the queue in one round trip (or spool them all)."""
        if not records:
            return
        try:
            self.store.push_many([record.message for record in records])
        except redis.RedisError as exc:
            self._fallback(records, exc)

    def _fallback(
        self, records: Sequence[Record], exc: redis.RedisError, due_epoch_s: float | None = None
    ) -> None:
        where = redact_url(self.settings.broker_url)
        what = (
            f"record {records[0].response_id}"
            if len(records) == 1
            else f"{len(records)} records (first response_id {records[0].response_id})"
        )
        if self.spool is None:
            raise PublishError(
                f"{what} was not published: the broker at {where} did not take it ({exc}); "
                "the spool is off (AICM_SPOOL_ENABLED=false)"
            ) from exc
        # All or none, in one transaction; SpoolFullError / SpoolWriteError otherwise.
        self.spool.append_many([record.message for record in records], due_epoch_s)
        if not self._spooling:
            logger.warning(
                "the broker at %s does not answer (%s): spooling records to %s until it does",
                where,
                exc,
                self.spool.directory,
            )
            self._spooling = True
        self.spool.ensure_drainer(self.store, self._broker_answers)

    def _resume_leftovers(self) -> None:
        """Once per process: records spooled for our queue by a process that died are
        pushed by us. Never fails the publish: a spool we cannot read is logged."""
        self._checked_leftovers_pid = os.getpid()
        if self.spool is None:
            return
        try:
            waiting = self.spool.has_records()
        except (sqlite3.Error, OSError) as exc:
            logger.warning("the spool in %s cannot be read: %s", self.spool.directory, exc)
            return
        if waiting:
            self.spool.ensure_drainer(self.store, self._broker_answers)

    def _broker_answers(self) -> bool:
        try:
            return bool(self.store.client.ping())
        except redis.RedisError:
            return False


def producer_client(settings: Settings) -> redis.Redis:
    """A Redis client whose every call ends within about ``publish_timeout_s``.

    Each attempt gets half the budget, and one retry on a fresh connection covers
    a pooled connection that went stale (a Redis restart).
    """
    half_s = settings.publish_timeout_s / 2
    return redis.Redis.from_url(
        settings.broker_url,
        socket_connect_timeout=half_s,
        socket_timeout=half_s,
        retry=Retry(NoBackoff(), 1),
        health_check_interval=0,
    )
