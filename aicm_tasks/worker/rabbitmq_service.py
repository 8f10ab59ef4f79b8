"""The delivery loop on RabbitMQ: consume a batch, deliver it, settle it, ack it once.

:class:`RabbitDeliveryService` is :class:`~aicm_tasks.worker.service.DeliveryService`'s
counterpart when records travel through RabbitMQ (``settings.records_on_rabbitmq``).
Each delivery thread owns a :class:`~aicm_tasks.broker.rabbitmq.consumer.BatchConsumer`
(its own connection and channel), takes a batch, sends and plans it with the
same pure code as on Redis (:mod:`aicm_tasks.worker.batches`), then settles it:
retries to the delay topology and dead letters to their stream, confirmed, the
figures to theirs, and one ``basic_ack(multiple=True)``.

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
from aicm_tasks.broker.rabbitmq.consumer import Batch, BatchConsumer, delivery_count
from aicm_tasks.broker.rabbitmq.names import DELIVERY_LIMIT, RabbitNames
from aicm_tasks.broker.rabbitmq.topology import declare_topology
from aicm_tasks.errors import ConfigurationError, SettleError
from aicm_tasks.redact import redact_url
from aicm_tasks.settings import Settings
from aicm_tasks.worker.batches import close_all, log_batch, process, timed
from aicm_tasks.worker.delivery import plan_parked
from aicm_tasks.worker.observe import BatchReport, Observer, Observers
from aicm_tasks.worker.outcomes import Post
from aicm_tasks.worker.retry import (
    REDIS_RETRY_MAX_S,
    REDIS_RETRY_MIN_S,
    BackoffPolicy,
    next_pause_s,
)
from aicm_tasks.worker.transport import TrackTransport

logger = logging.getLogger(__name__)

#: Longest single wait for a delivery, so a stop request is noticed quickly.
MAX_WAIT_S = 1.0
#: Every socket wait of a delivery connection (connect, a write, a confirm),
#: in seconds: far above a healthy broker's answer, short enough that a broker
#: gone silent hands the batch back within it.
CONNECTION_TIMEOUT_S = 10.0
#: How often an idle worker appends an ``idle_at`` mark to the figures stream, in
#: seconds: well inside the shortest health window a test uses (a few seconds),
#: and one small message per worker per interval (an idle thread finds the queue
#: empty every MAX_WAIT_S; per thread and per second it would be 4 messages a second).
IDLE_NOTE_S = 2.0
#: How often the parked queue is looked at (and the queue depths read for the
#: observers), in seconds; it fills only when a record was returned
#: DELIVERY_LIMIT times, so it is nearly always empty.
PARKED_EVERY_S = 5.0
#: Most parked records moved to the dead-letter stream per settle.
PARKED_BATCH = 100
#: Errors after which a delivery thread reconnects: the broker's, and a settle it refused.
_RECONNECT_ERRORS: tuple[type[BaseException], ...] = (*RABBIT_ERRORS, SettleError)
#: What declaring the topology raises while the broker is unreachable (kombu
#: wraps a refused connection in its OperationalError).
_START_ERRORS: tuple[type[BaseException], ...] = (*RABBIT_ERRORS, OperationalError)


class RabbitDeliveryService:
    """Delivery threads plus the parked-queue drain, for one worker process on RabbitMQ."""

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
        #: Deliveries RabbitMQ sends ahead: two batches, so the next is in the
        #: client while one is posted (``docs/design/rabbitmq.md``).
        self.prefetch = prefetch or 2 * batch_size
        self.parked_every_s = parked_every_s
        self.on_stopped = tuple(on_stopped)
        #: The worker's Celery hostname (``w1@host``), as Flower names it.
        self.name = name
        self.consumer = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._stop = threading.Event()
        self._idle_lock = threading.Lock()
        self._idle_noted = -IDLE_NOTE_S
        self._threads: list[threading.Thread] = []

    # -- lifecycle ---------------------------------------------------------------
    def start(self) -> None:
        """Declare the topology (waiting for the broker), then start the threads."""
        self._stop.clear()
        self._retrying("declare the RabbitMQ topology", self._declare)
        self._threads = [
            threading.Thread(target=self._deliver_loop, name=f"aicm-delivery-{n}", daemon=True)
            for n in range(self.concurrency)
        ]
        self._threads.append(
            threading.Thread(target=self._parked_loop, name="aicm-parked", daemon=True)
        )
        for thread in self._threads:
            thread.start()
        logger.info(
            "delivery started on RabbitMQ: worker=%s consumer=%s queue=%s batch_size=%d "
            "prefetch=%d flush_interval_s=%.3g threads=%d",
            self.name or "-",
            self.consumer,
            self.names.queue,
            self.batch_size,
            self.prefetch,
            self.flush_interval_s,
            self.concurrency,
        )

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop taking batches and let in-flight ones settle; each thread then closes
        its connection, which returns whatever it still held to the queue."""
        self._stop.set()
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        if any(t.is_alive() for t in self._threads):
            logger.warning(
                "a delivery thread is still busy after %.0fs; its batch returns to the queue "
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
    def _deliver_loop(self) -> None:
        self._consume_loop(self.names.queue, self.batch_size, self.prefetch, self._run_one_batch)

    def _parked_loop(self) -> None:
        self._consume_loop(
            self.names.parked, PARKED_BATCH, PARKED_BATCH, self._settle_parked, self.parked_every_s
        )

    def _consume_loop(
        self,
        queue: str,
        batch_size: int,
        prefetch: int,
        handle: Callable[[BatchConsumer, Batch], None],
        idle_s: float = 0.0,
    ) -> None:
        """Take batches from ``queue`` and ``handle`` them until stopped; on any
        broker failure close the connection (RabbitMQ requeues what was not
        acknowledged) and connect again after a pause."""
        consumer: BatchConsumer | None = None
        pause_s = REDIS_RETRY_MIN_S
        try:
            while not self._stop.is_set():
                try:
                    if consumer is None:
                        consumer = BatchConsumer(
                            self.url,
                            self.names,
                            queue=queue,
                            prefetch=prefetch,
                            timeout_s=CONNECTION_TIMEOUT_S,
                            keep_headers=queue == self.names.parked,
                        )
                    batch = consumer.take(
                        batch_size,
                        flush_interval_s=self.flush_interval_s,
                        wait_s=MAX_WAIT_S,
                        stop=self._stop,
                    )
                    if batch.bodies:
                        handle(consumer, batch)
                    elif queue == self.names.queue:
                        self._note_idle(consumer)
                    elif idle_s:
                        if self.observers:  # the depth gauges (metrics), as housekeeping on Redis
                            self.observers.housekeeping(consumer.depth())
                        self._stop.wait(idle_s)
                    pause_s = REDIS_RETRY_MIN_S
                except _RECONNECT_ERRORS as exc:
                    logger.warning(
                        "RabbitMQ error while consuming %s (%s: %s); what this thread held goes "
                        "back to the queue, reconnecting in %.1fs",
                        queue,
                        type(exc).__name__,
                        exc,
                        pause_s,
                    )
                    _close(consumer)
                    consumer = None
                    self._stop.wait(pause_s)
                    pause_s = next_pause_s(pause_s)
                except Exception:  # a bug must not kill the thread
                    logger.exception(
                        "unexpected error in delivery; the batch goes back to the queue"
                    )
                    _close(consumer)
                    consumer = None
                    self._stop.wait(REDIS_RETRY_MAX_S)
        finally:
            _close(consumer)

    def _note_idle(self, consumer: BatchConsumer) -> None:
        """At most once per :data:`IDLE_NOTE_S` for the whole worker (not per thread):
        the record queue was found empty."""
        with self._idle_lock:
            now = time.monotonic()
            if now - self._idle_noted < IDLE_NOTE_S:
                return
            self._idle_noted = now
        consumer.note_idle(consumer=self.consumer, name=self.name)

    def _run_one_batch(self, consumer: BatchConsumer, batch: Batch) -> None:
        started = time.monotonic()
        done = process(
            batch.bodies,
            self.post,
            self.aliases,
            self.policy,
            auth_retry_interval_s=self.auth_retry_interval_s,
        )
        consumer.settle(batch, done.resolution, consumer=self.consumer, name=self.name)
        elapsed_s = time.monotonic() - started
        log_batch(
            done.summary, elapsed_s=elapsed_s, auth_retry_interval_s=self.auth_retry_interval_s
        )
        batch_key = f"{self.names.queue}:{self.consumer}:{batch.last_tag}"
        self.observers.batch_settled(BatchReport(batch_key, done.summary, elapsed_s, done.items))

    def _settle_parked(self, consumer: BatchConsumer, batch: Batch) -> None:
        details = [
            f"RabbitMQ returned this record {delivery_count(headers) or DELIVERY_LIMIT}+ times "
            f"without a settle (delivery limit {DELIVERY_LIMIT}: a worker died holding it each "
            "time) and parked it"
            for headers in batch.headers
        ]
        resolution, summary = plan_parked(batch.bodies, details)
        consumer.settle(batch, resolution, consumer=self.consumer, name=self.name)
        log_batch(summary, elapsed_s=0.0, auth_retry_interval_s=self.auth_retry_interval_s)

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


def _close(consumer: BatchConsumer | None) -> None:
    """Close ``consumer``, if any."""
    if consumer is not None:
        consumer.close()
    return None


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
