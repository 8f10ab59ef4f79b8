"""The producer's path to RabbitMQ: persistent, confirmed publishes to the record queue.

:class:`RabbitTarget` is to RabbitMQ what ``producer/shards.py``'s
``ShardedTarget`` is to Redis: the producer publishes one record
(:meth:`~RabbitTarget.push`), a list (:meth:`~RabbitTarget.push_many`: one
confirm wait for all) or records due later (:meth:`~RabbitTarget.schedule`:
through kombu's native delayed delivery under our prefix), and the spool drain
pushes through the same calls (``docs/design/rabbitmq.md``, "Publish path").

- A call returns only once the broker confirmed every message, and ends within
  about ``timeout_s`` (connect, publish and confirm): a confirm that is late
  raises ``TimeoutError``; the caller spools, and the record may be in the
  queue too (a duplicate ``response_id``, which ``docs/guarantees.md`` allows).
- Messages are ``mandatory``: a queue that was deleted returns them instead of
  dropping them. The record queue is then declared again (with its bindings)
  and the returned messages published once more. A delay topology that is
  missing (404 on its entry exchange) is declared whole, once, and the publish
  retried.
- Messages the broker refused (a nack: a full queue under ``reject-publish``)
  are named by :class:`~aicm_tasks.errors.RecordsRefusedError`; the others are
  in the queue.
- One connection per process (reopened after a fork), behind a lock: py-amqp is
  not thread-safe. After any error the connection is dropped and the next call
  opens a new one; a call that failed on a connection opened by an earlier call
  (the broker restarted since) is tried once more on a fresh one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import amqp
from kombu.exceptions import KombuError

from aicm_tasks.broker.messages import decode
from aicm_tasks.broker.rabbitmq.confirms import ConfirmedPublishes
from aicm_tasks.broker.rabbitmq.connection import RABBIT_ERRORS, open_connection
from aicm_tasks.broker.rabbitmq.names import RabbitNames
from aicm_tasks.broker.rabbitmq.topology import declare_record_queue, declare_topology
from aicm_tasks.errors import RecordsRefusedError
from aicm_tasks.redact import redact_url
from aicm_tasks.settings import Settings

logger = logging.getLogger(__name__)

#: One message to publish: (exchange, routing key, body).
Item = tuple[str, str, bytes]


@dataclass(slots=True)
class _Link:
    """The process's connection and its one channel in confirm mode."""

    connection: amqp.Connection
    publishes: ConfirmedPublishes
    pid: int


class RabbitTarget:
    """Where a producer (or a spool drain) publishes records on RabbitMQ.

    ``url`` is the ``amqp://`` broker, ``names`` the deployment's topology,
    ``timeout_s`` the budget of one call (``AICM_PUBLISH_TIMEOUT_S``). Thread-safe;
    fork-safe (a child opens its own connection and never touches its parent's).
    """

    def __init__(self, url: str, names: RabbitNames, *, timeout_s: float) -> None:
        self.url = url
        self.names = names
        self.timeout_s = timeout_s
        self._link: _Link | None = None
        self._lock = threading.Lock()
        #: Set by ``basic.return``: a message no queue took (the queue was deleted).
        self._returned = False
        reference = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _forget_in_child(reference))

    @classmethod
    def for_settings(cls, settings: Settings, *, timeout_s: float | None = None) -> RabbitTarget:
        """The target of ``AICM_BROKER_URL`` and ``AICM_QUEUE``; ``timeout_s`` defaults
        to ``AICM_PUBLISH_TIMEOUT_S``."""
        return cls(
            settings.broker_url,
            RabbitNames(settings.queue, settings.key_prefix),
            timeout_s=settings.publish_timeout_s if timeout_s is None else timeout_s,
        )

    # -- what the producer and the spool drain call ---------------------------------
    def push(self, message: bytes) -> None:
        """Publish one message to the record queue and wait for its confirm."""
        self._publish([("", self.names.queue, message)])

    def push_many(self, messages: Sequence[bytes]) -> None:
        """Publish many messages, then wait once for all their confirms.

        Raises :class:`RecordsRefusedError` naming the refused ones when the
        broker took only some (the others are in the queue).
        """
        self._publish([("", self.names.queue, message) for message in messages])

    def schedule(self, items: Iterable[tuple[float, bytes]]) -> None:
        """Publish messages due at ``due_epoch_s`` through the delay topology (whole
        seconds, rounded up); one already due goes straight to the record queue."""
        now = time.time()
        planned: list[Item] = []
        for due_epoch_s, message in items:
            if due_epoch_s <= now:
                planned.append(("", self.names.queue, message))
            else:
                key = self.names.delay_routing_key(due_epoch_s - now)
                planned.append((self.names.delay_entry, key, message))
        self._publish(planned)

    def answers(self) -> bool:
        """Whether the broker answers a round trip (a spool drain checks before pushing)."""
        deadline = time.monotonic() + self.timeout_s
        if not self._lock.acquire(timeout=self.timeout_s):
            return False
        try:
            link = self._ready(deadline)
            # A passive declare of an exchange every vhost has: one round trip.
            link.publishes.channel.exchange_declare("amq.topic", "topic", passive=True)
        except RABBIT_ERRORS as exc:
            logger.debug("RabbitMQ at %s does not answer: %s", redact_url(self.url), exc)
            self._drop()
            return False
        finally:
            self._lock.release()
        return True

    def close(self) -> None:
        """Close this process's connection (the next call opens another)."""
        with self._lock:
            link, self._link = self._link, None
        if link is not None and link.pid == os.getpid():
            with contextlib.suppress(*RABBIT_ERRORS, AttributeError):
                link.connection.close()

    # -- one call ------------------------------------------------------------------
    def _publish(self, items: list[Item]) -> None:
        if not items:
            return
        deadline = time.monotonic() + self.timeout_s
        if not self._lock.acquire(timeout=self.timeout_s):
            raise TimeoutError(
                f"the RabbitMQ connection was busy with other threads for {self.timeout_s:g}s"
            )
        try:
            refused = self._publish_locked(items, deadline)
        finally:
            self._lock.release()
        if refused:
            first = decode(refused[0]).response_id
            raise RecordsRefusedError(
                f"RabbitMQ at {redact_url(self.url)} refused {len(refused)} of {len(items)} "
                f"records (first response_id {first}): queue {self.names.queue} is full "
                "(x-max-length under reject-publish) or refuses them",
                refused,
            )

    def _publish_locked(self, items: list[Item], deadline: float) -> list[bytes]:
        """Publish ``items`` and wait for their confirms; returns the refused bodies."""
        redeclared = retried = False
        while True:
            reused = self._link is not None and self._link.pid == os.getpid()
            try:
                link = self._ready(deadline)
                self._returned = False
                publishes = link.publishes
                tags = [
                    publishes.publish(body, routing_key=key, exchange=ex) for ex, key, body in items
                ]
                refused_tags = publishes.wait(_left(deadline))
                if refused_tags and self._returned and not redeclared:
                    # No queue took them: it was deleted. Declare it again (with
                    # its bindings) and publish the returned round once more.
                    redeclared = True
                    items = [
                        item for item, tag in zip(items, tags, strict=True) if tag in refused_tags
                    ]
                    self._restore_record_queue(link.publishes.channel)
                    continue
            except amqp.exceptions.NotFound:
                # 404 on publish: an exchange is missing (the delay topology;
                # the channel is closed). Declare everything once and retry.
                self._drop()
                if redeclared:
                    raise
                redeclared = True
                self._declare_topology(deadline)
                continue
            except RABBIT_ERRORS as exc:
                self._drop()
                if reused and not retried and not _timed_out(exc) and _left(deadline) > 0:
                    # The connection an earlier call opened went stale (a broker
                    # restart): once more on a fresh one.
                    retried = True
                    continue
                raise
            return [
                body for (_, _, body), tag in zip(items, tags, strict=True) if tag in refused_tags
            ]

    # -- the connection ------------------------------------------------------------
    def _ready(self, deadline: float) -> _Link:
        """This process's link, opened when there is none (the caller holds the lock)."""
        link = self._link
        if link is not None and link.pid == os.getpid():
            return link
        # A link inherited across fork is the parent's socket: dropped, never closed.
        self._link = None
        connection = open_connection(self.url, timeout_s=_left(deadline))
        try:
            channel = connection.channel()
            publishes = ConfirmedPublishes(channel)
            # py-amqp calls this on basic.return (its stubs omit ``events``).
            events: Any = getattr(channel, "events")  # noqa: B009
            events["basic_return"].add(self._on_return)
        except BaseException:
            _discard(connection)
            raise
        self._link = _Link(connection, publishes, os.getpid())
        return self._link

    def _on_return(self, *args: Any) -> None:
        self._returned = True

    def _drop(self) -> None:
        """Forget the link after an error: its socket is closed, no close handshake
        (which would wait for a broker that may not answer)."""
        link, self._link = self._link, None
        if link is not None and link.pid == os.getpid():
            _discard(link.connection)

    def _restore_record_queue(self, channel: amqp.Channel) -> None:
        """Declare the record queue and bind it to the records exchange, as a worker
        would: delayed records come back through that exchange."""
        logger.warning(
            "queue %s is missing on RabbitMQ at %s: declaring it again",
            self.names.queue,
            redact_url(self.url),
        )
        declare_record_queue(channel, self.names)
        exchange = self.names.records_exchange
        channel.exchange_declare(exchange, "topic", durable=True, auto_delete=False)
        for key in (self.names.queue, f"#.{self.names.queue}"):
            channel.queue_bind(self.names.queue, exchange, routing_key=key)

    def _declare_topology(self, deadline: float) -> None:
        logger.warning(
            "the delay topology of %s is missing on RabbitMQ at %s: declaring it",
            self.names.queue,
            redact_url(self.url),
        )
        try:
            declare_topology(self.url, self.names, timeout_s=max(_left(deadline), 0.1))
        except KombuError as exc:  # kombu's own connection errors
            raise ConnectionError(f"could not declare the topology: {exc}") from exc

    def _after_fork_in_child(self) -> None:
        """A child forked while another thread held the lock would wait forever on it."""
        self._lock = threading.Lock()


def _left(deadline: float) -> float:
    """What is left of a call's budget; ``TimeoutError`` when nothing is."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("the publish budget (AICM_PUBLISH_TIMEOUT_S) ran out")
    return left


def _timed_out(exc: BaseException) -> bool:
    """A timeout spent the budget: no second try (py-amqp wraps a write timeout)."""
    return isinstance(exc, TimeoutError) or "timed out" in str(exc)


def _discard(connection: amqp.Connection) -> None:
    with contextlib.suppress(Exception):  # its socket is being dropped either way
        connection.collect()


def _forget_in_child(reference: weakref.ref[RabbitTarget]) -> None:
    target = reference()
    if target is not None:
        target._after_fork_in_child()
