"""The delivery loop on RabbitMQ: read batches, post them, settle each, ack it once.

:class:`RabbitDeliveryService` is :class:`~aicm_tasks.worker.service.DeliveryService`'s
counterpart when records travel through RabbitMQ (``settings.records_on_rabbitmq``).
One reading thread owns the record queue's connection (a
:class:`~aicm_tasks.broker.rabbitmq.consumer.FeedConnection`, a channel per
posting thread) and does all its socket work; ``concurrency`` posting threads
send and plan each batch with the same pure code as on Redis
(:mod:`aicm_tasks.worker.batches`); the reader then settles it: retries to the
delay topology and dead letters to their stream, confirmed, the figures to
theirs, and one ``basic_ack(multiple=True)`` (:mod:`.rabbitmq_reader` says why
one reader).

What Redis needs and RabbitMQ does not: leases, RECLAIM, SWEEP, the redelivery
timeout and the promotion of due retries. A worker that dies closes its
sockets and RabbitMQ returns its unacknowledged deliveries at once; a failure
before the ack closes the connection, which does the same; due retries come
back through the delay topology by themselves. So there is no housekeeping
thread, only a drain of the parked queue (records RabbitMQ moved there past
its delivery limit) into the dead-letter stream. Nothing here opens a Redis
connection.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import amqp
from kombu.exceptions import OperationalError

from aicm_tasks.broker.rabbitmq.connection import RABBIT_ERRORS
from aicm_tasks.broker.rabbitmq.consumer import Batch, ChannelFeed, FeedConnection
from aicm_tasks.broker.rabbitmq.names import RabbitNames
from aicm_tasks.broker.rabbitmq.topology import declare_topology
from aicm_tasks.errors import ConfigurationError
from aicm_tasks.redact import redact_url
from aicm_tasks.settings import Settings
from aicm_tasks.worker.batches import Processed, close_all, log_batch, process, timed
from aicm_tasks.worker.observe import BatchReport, Observer, Observers
from aicm_tasks.worker.outcomes import Post
from aicm_tasks.worker.rabbitmq_loop import CONNECTION_TIMEOUT_S, consume_reconnecting
from aicm_tasks.worker.rabbitmq_parked import PARKED_EVERY_S, ParkedDrain
from aicm_tasks.worker.rabbitmq_reader import FeedReader, Posted, ReaderState
from aicm_tasks.worker.retry import (
    REDIS_RETRY_MIN_S,
    BackoffPolicy,
    next_pause_s,
)
from aicm_tasks.worker.transport import TrackTransport

logger = logging.getLogger(__name__)

#: How often an idle worker appends an ``idle_at`` mark to the figures stream, in
#: seconds: well inside the shortest health window a test uses (a few seconds),
#: and one small message per worker per interval.
IDLE_NOTE_S = 2.0
#: What declaring the topology raises while the broker is unreachable (kombu
#: wraps a refused connection in its OperationalError).
_START_ERRORS: tuple[type[BaseException], ...] = (*RABBIT_ERRORS, OperationalError)


class RabbitDeliveryService:
    """A reading thread, its posting threads and the parked-queue drain: one worker on RabbitMQ."""

    def __init__(
        self,
        url: str,
        names: RabbitNames,
        post: Post | None,
        *,
        batch_size: int,
        flush_interval_s: float,
        concurrency: int,
        policy: BackoffPolicy,
        auth_retry_interval_s: float,
        observers: Sequence[Observer] = (),
        aliases: Mapping[str, Post] | None = None,
        on_stopped: Sequence[Callable[[], None]] = (),
        name: str = "",
        prefetch: int | None = None,
        parked_every_s: float = PARKED_EVERY_S,
    ) -> None:
        self.url = url
        self.names = names
        self.observers = Observers(observers)
        self.post = timed(post, self.observers) if post is not None else None
        self.aliases = {
            alias: timed(send, self.observers) for alias, send in (aliases or {}).items()
        }
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self.concurrency = concurrency
        self.policy = policy
        self.auth_retry_interval_s = auth_retry_interval_s
        #: Deliveries RabbitMQ sends each channel ahead: two batches, so the next is in the
        #: client while one is posted (``docs/design/rabbitmq.md``).
        self.prefetch = prefetch or 2 * batch_size
        self.on_stopped = tuple(on_stopped)
        #: The worker's Celery hostname (``w1@host``), as Flower names it.
        self.name = name
        self.consumer = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._reader: FeedReader | None = None
        self._parked = ParkedDrain(
            url,
            names,
            self.observers,
            consumer=self.consumer,
            name=name,
            every_s=parked_every_s,
            auth_retry_interval_s=auth_retry_interval_s,
        )

    # -- lifecycle ---------------------------------------------------------------
    def start(self) -> None:
        """Declare the topology (waiting for the broker), then start the threads."""
        self._stop.clear()
        self._retrying("declare the RabbitMQ topology", self._declare)
        self._reader = FeedReader(
            batch_size=self.batch_size,
            flush_interval_s=self.flush_interval_s,
            concurrency=self.concurrency,
            process=self._process,
            settle=self._settle,
            settled=self._settled,
            idle=self._note_idle,
            idle_after_s=IDLE_NOTE_S,
        )
        self._threads = [
            threading.Thread(target=self._read_loop, name="aicm-reader", daemon=True),
            threading.Thread(target=self._parked.run, args=(self._stop,), name="aicm-parked"),
        ]
        for thread in self._threads:
            thread.start()
        logger.info(
            "delivery started on RabbitMQ: worker=%s consumer=%s queue=%s batch_size=%d "
            "prefetch=%d a channel flush_interval_s=%.3g posting threads=%d",
            self.name or "-",
            self.consumer,
            self.names.queue,
            self.batch_size,
            self.prefetch,
            self.flush_interval_s,
            self.concurrency,
        )

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop taking batches and let in-flight ones settle; the reader then closes
        its connection, which returns whatever it still held to the queue."""
        self._stop.set()
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        if any(t.is_alive() for t in self._threads):
            logger.warning(
                "a batch is still being posted after %.0fs; it returns to the queue "
                "when the worker exits",
                timeout_s,
            )
        else:
            close_all(self.on_stopped)
        logger.info("delivery stopped: consumer=%s", self.consumer)

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def _declare(self) -> None:
        try:
            declare_topology(self.url, self.names, timeout_s=CONNECTION_TIMEOUT_S)
        except amqp.exceptions.PreconditionFailed as exc:
            # 406: a queue of the same name exists with other arguments (an old
            # classic queue, say). Declaring it differently never succeeds.
            raise ConfigurationError(
                f"RabbitMQ at {redact_url(self.url)} holds a queue named like this "
                f"deployment's with other arguments ({exc}); aicm-tasks needs "
                f"{self.names.queue} as a quorum queue with "
                f"{self.names.record_queue_arguments()}: move its records and delete it, "
                "or set AICM_QUEUE to another name (docs/how-it-works.md)"
            ) from exc

    # -- delivery ----------------------------------------------------------------
    def _read_loop(self) -> None:
        """Read, hand out and settle the record queue's batches until stopped (and
        every batch out has come back); on any broker failure close the connection
        (RabbitMQ requeues what was not acknowledged, the batches out included) and
        connect again after a pause."""
        reader = self._reader
        assert reader is not None  # set by start()
        state: ReaderState | None = None
        generation = 0

        def turn() -> bool:
            nonlocal state, generation
            stopping = self._stop.is_set()
            if stopping and (state is None or not state.busy):
                return False
            if state is None:
                generation += 1
                connection = FeedConnection(
                    self.url,
                    self.names,
                    feeds=self.concurrency,
                    prefetch=self.prefetch,
                    timeout_s=CONNECTION_TIMEOUT_S,
                )
                state = reader.attach(connection, generation)
            reader.step(state, stopping=stopping)
            return True

        def drop() -> None:
            nonlocal state
            reader.detach()
            if state is not None:
                state.connection.close()
                state = None

        try:
            consume_reconnecting(self._stop, self.names.queue, turn, drop)
        finally:
            reader.shutdown()

    def _process(self, batch: Batch) -> Processed:
        """In a posting thread: send the batch and plan every record's fate."""
        return process(
            batch.bodies,
            self.post,
            self.aliases,
            self.policy,
            auth_retry_interval_s=self.auth_retry_interval_s,
        )

    def _settle(self, feed: ChannelFeed, batch: Batch, done: Processed) -> None:
        """In the reader: write the batch's fate, then ack it."""
        feed.settle(batch, done.resolution, consumer=self.consumer, name=self.name)

    def _settled(self, feed: int, posted: Posted) -> None:
        """In the reader, after the ack: the log line and the observers."""
        done = posted.done
        assert done is not None  # settled only with a result
        elapsed_s = time.monotonic() - posted.started
        log_batch(
            done.summary, elapsed_s=elapsed_s, auth_retry_interval_s=self.auth_retry_interval_s
        )
        batch_key = f"{self.names.queue}:{self.consumer}:{feed}:{posted.batch.last_tag}"
        self.observers.batch_settled(BatchReport(batch_key, done.summary, elapsed_s, done.items))

    def _note_idle(self, feed: ChannelFeed) -> None:
        """The record queue has been empty for :data:`IDLE_NOTE_S`: say so to ``status``."""
        feed.note_idle(consumer=self.consumer, name=self.name)

    def _retrying(self, what: str, action: Callable[[], None]) -> None:
        """Run ``action`` until it succeeds or the service stops (a broker still starting)."""
        pause_s = REDIS_RETRY_MIN_S
        while True:
            try:
                action()
                return
            except _START_ERRORS as exc:
                if self._stop.is_set():
                    raise
                logger.warning(
                    "RabbitMQ error (%s: %s) while trying to %s; retrying in %.1fs",
                    type(exc).__name__,
                    exc,
                    what,
                    pause_s,
                )
                time.sleep(pause_s)
                pause_s = next_pause_s(pause_s)


def build_rabbitmq_service(
    settings: Settings, *, extra_observers: Sequence[Observer] = (), **overrides: Any
) -> RabbitDeliveryService:
    """Build the delivery service of a worker whose records are on RabbitMQ.

    No Redis anywhere: the triggered limits a /track answer carries are not
    kept (their store is Redis-only so far), and ``AICM_LIMITS_ENABLED`` is
    refused with an amqp broker when the settings load (settings.py), so no
    worker here polls them.
    """
    default_key = settings.api_key.get_secret_value() if settings.api_key else ""
    keys = {alias: key.get_secret_value() for alias, key in settings.api_keys.items()}
    transport = TrackTransport(
        settings.track_url,
        default_key or None,
        keys=keys,
        timeout_s=settings.http_timeout_s,
        max_connections=settings.delivery_concurrency,
    )
    options: dict[str, Any] = {
        "batch_size": settings.batch_size,
        "flush_interval_s": settings.flush_interval_s,
        "concurrency": settings.delivery_concurrency,
        "policy": BackoffPolicy(settings.retry_base_s, settings.retry_max_s, settings.max_retries),
        "auth_retry_interval_s": settings.auth_retry_interval_s,
        "observers": list(extra_observers),
        "aliases": {alias: transport.sender(alias) for alias in transport.aliases},
        # Its pooled connections are closed when the service stops (not at exit).
        "on_stopped": [transport.close],
    }
    options.update(overrides)
    return RabbitDeliveryService(
        settings.broker_url,
        RabbitNames(settings.queue, settings.key_prefix),
        transport.poster(),
        **options,
    )
