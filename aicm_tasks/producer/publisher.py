"""The producer's path to the broker: one LPUSH of the record's bytes (on RabbitMQ,
one confirmed publish: :mod:`aicm_tasks.broker.rabbitmq.publisher`).

This bypasses Celery's message building on purpose. A plain ``.delay`` spends
most of its time building a printable copy of the arguments and a protocol-2
envelope (and kombu 5.7 builds a new Redis client per publish); the worker
reads records in bulk straight from the Redis list, so it needs none of that.
The list is still the Celery queue named in the app's ``task_queues``, so
Celery and Flower tools see its length (with one shard: sharded queues carry
their shard's hash tag, see :mod:`aicm_tasks.broker.topology`). With several
shards each publish goes to the next shard that answers (:mod:`.shards`).

With ``AICM_BROKER_URL=amqp://...`` (``Settings.records_on_rabbitmq``) the
target is :class:`~aicm_tasks.broker.rabbitmq.publisher.RabbitTarget`: the
same calls, each returning once the broker confirmed the records. Whatever the
broker, a record it did not take goes to the spool (:data:`BROKER_ERRORS`), and
of a list it took in part only the refused records do.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from typing import Protocol

from redis.backoff import NoBackoff
from redis.retry import Retry

from aicm_tasks.broker.errors import BROKER_ERRORS
from aicm_tasks.broker.rabbitmq.publisher import RabbitTarget
from aicm_tasks.broker.records import RecordStore
from aicm_tasks.broker.topology import Topology, connect, record_urls
from aicm_tasks.errors import ConfigurationError, PublishError, RecordsRefusedError
from aicm_tasks.producer.record import Record
from aicm_tasks.producer.shards import ShardedTarget
from aicm_tasks.producer.spool import Spool
from aicm_tasks.redact import redact_url
from aicm_tasks.settings import Settings

logger = logging.getLogger(__name__)

#: The budget of one drained chunk's publish on RabbitMQ (the spool's drain
#: thread, ``CeleryDelivery.close``): longer than a web request's publish.
DRAIN_TIMEOUT_S = 10.0


class RecordTarget(Protocol):
    """Where records are published: :class:`ShardedTarget` (Redis) or
    :class:`RabbitTarget` (RabbitMQ). Both raise one of :data:`BROKER_ERRORS` when
    the broker did not take the records; :class:`RecordsRefusedError` when it took
    some of them (``refused`` names the others)."""

    def push(self, message: bytes) -> None: ...

    def push_many(self, messages: Sequence[bytes]) -> None: ...

    def schedule(self, items: Iterable[tuple[float, bytes]]) -> None: ...

    def answers(self) -> bool: ...


def record_target(settings: Settings, *, timeout_s: float | None = None) -> RecordTarget:
    """The target ``settings`` name: RabbitMQ when ``records_on_rabbitmq``, else every
    Redis shard. ``timeout_s`` bounds one call (default ``AICM_PUBLISH_TIMEOUT_S``)."""
    if settings.records_on_rabbitmq:
        return RabbitTarget.for_settings(settings, timeout_s=timeout_s)
    return ShardedTarget(producer_topology(settings, timeout_s=timeout_s).stores)


class Publisher:
    """Publishes validated records; one per process is enough (redis-py's pool
    is thread-safe and resets itself in a forked child; the RabbitMQ target opens
    a connection of its own in a child)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._target: RecordTarget | None = None
        self._drain_target: RecordTarget | None = None
        self._lock = threading.Lock()
        self.spool: Spool | None = Spool.for_settings(settings) if settings.spool_enabled else None
        self._spooling = False
        self._checked_leftovers_pid = -1

    @property
    def target(self) -> RecordTarget:
        """RabbitMQ, or every Redis shard, connected on first use (a cluster client
        learns the slot map then: raises :class:`redis.RedisError` when no node answers)."""
        target = self._target
        if target is None:
            with self._lock:
                if self._target is None:
                    self._target = record_target(self.settings)
                target = self._target
        return target

    @property
    def store(self) -> RecordStore:
        """The first Redis shard's store (the only one, unless sharded); Redis only."""
        target = self.target
        if not isinstance(target, ShardedTarget):
            raise ConfigurationError("records travel through RabbitMQ: there is no Redis store")
        return target.stores[0]

    def publish(self, record: Record, *, due_epoch_s: float | None = None) -> None:
        """Put one record on the queue (or in the scheduled set when ``due_epoch_s``).

        When the broker does not answer, the record goes to the spool (if enabled)
        and this returns normally; :class:`PublishError` only when it cannot.
        """
        if self._checked_leftovers_pid != os.getpid():
            self._resume_leftovers()
        try:
            if due_epoch_s is None:
                self.target.push(record.message)
            else:
                self.target.schedule([(due_epoch_s, record.message)])
        except BROKER_ERRORS as exc:
            self._fallback([record], [record.message], exc, due_epoch_s)
            return
        self._spooling = False

    def publish_many(self, records: Sequence[Record]) -> None:
        """Put many records on the queue in one round trip (or spool them all; on
        RabbitMQ, only those the broker refused or did not confirm)."""
        if not records:
            return
        try:
            self.target.push_many([record.message for record in records])
        except RecordsRefusedError as exc:
            # The others are in the queue: spooling them too would send them twice.
            self._fallback(records, exc.refused, exc)
        except BROKER_ERRORS as exc:
            self._fallback(records, [record.message for record in records], exc)

    def _fallback(
        self,
        records: Sequence[Record],
        messages: Sequence[bytes],
        exc: BaseException,
        due_epoch_s: float | None = None,
    ) -> None:
        """Spool ``messages`` (those of ``records`` the broker did not take)."""
        where = ", ".join(redact_url(url) for url in record_urls(self.settings))
        what = (
            f"record {records[0].response_id}"
            if len(records) == 1
            else f"{len(messages)} of {len(records)} records (first response_id "
            f"{records[0].response_id})"
        )
        if self.spool is None:
            raise PublishError(
                f"{what} was not published: the broker at {where} did not take it ({exc}); "
                "the spool is off (AICM_SPOOL_ENABLED=false)"
            ) from exc
        # All or none, in one transaction; SpoolFullError / SpoolWriteError otherwise.
        self.spool.append_many(messages, due_epoch_s)
        if not self._spooling:
            logger.warning(
                "the broker at %s does not take records (%s): spooling records to %s until it does",
                where,
                exc,
                self.spool.directory,
            )
            self._spooling = True
        self._start_drainer()

    @property
    def drain_target(self) -> RecordTarget:
        """Where spooled records are pushed back: the publisher's own target on Redis;
        on RabbitMQ a connection of its own whose calls may take
        :data:`DRAIN_TIMEOUT_S`, since a chunk of ``DRAIN_CHUNK`` records waits for
        that many confirms (about 0.1-0.2 s here, more under load), and a chunk
        timed out is pushed again whole: duplicates on every try."""
        if not self.settings.records_on_rabbitmq:
            return self.target
        target = self._drain_target
        if target is None:
            with self._lock:
                if self._drain_target is None:
                    self._drain_target = record_target(
                        self.settings,
                        timeout_s=max(self.settings.publish_timeout_s, DRAIN_TIMEOUT_S),
                    )
                target = self._drain_target
        return target

    def _start_drainer(self) -> None:
        """The spool's drain thread, pushing to whichever shards answer."""
        if self.spool is None:
            return
        if self.settings.records_on_rabbitmq:
            self.spool.ensure_drainer(self.drain_target, self._broker_answers)
            return
        try:
            target = self.target
        except BROKER_ERRORS:
            # No cluster node answered yet: the thread connects when one does.
            self.spool.ensure_drainer(_LazyTarget(self), self._broker_answers)
            return
        self.spool.ensure_drainer(target, self._broker_answers)

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
            self._start_drainer()

    def _broker_answers(self) -> bool:
        try:
            return self.target.answers()
        except BROKER_ERRORS:
            return False


class _LazyTarget:
    """The publisher's shards, looked up at each push (a spool target for a drain
    thread started before any shard answered)."""

    def __init__(self, publisher: Publisher) -> None:
        self.publisher = publisher

    def push_many(self, messages: Sequence[bytes]) -> None:
        self.publisher.target.push_many(messages)

    def schedule(self, items: Iterable[tuple[float, bytes]]) -> None:
        self.publisher.target.schedule(items)


def producer_topology(settings: Settings, *, timeout_s: float | None = None) -> Topology:
    """Every shard with clients whose every call ends within about ``timeout_s``
    (default ``publish_timeout_s``).

    Each attempt gets half the budget, and one retry on a fresh connection covers
    a pooled connection that went stale (a Redis restart).
    """
    half_s = (settings.publish_timeout_s if timeout_s is None else timeout_s) / 2
    return connect(
        settings,
        socket_connect_timeout=half_s,
        socket_timeout=half_s,
        retry=Retry(NoBackoff(), 1),
        health_check_interval=0,
    )
