"""The worker bootstep that runs delivery inside ``celery -A aicm_tasks worker``.

Celery's own consumer takes one message at a time (about 1,300 messages/s at
best here, with a window in which a SIGKILL loses a message), so the tracking
queue is taken away from it and read in bulk by :class:`DeliveryService`.
The step sits in the worker blueprint (not the consumer's), so Celery's own
reconnects do not restart delivery; delivery reconnects on its own.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from typing import Any

from celery import bootsteps
from celery.worker import control

from aicm_tasks.broker.limits import DEFAULT_SOURCE, LimitStore
from aicm_tasks.broker.topology import Topology, connect, uneven
from aicm_tasks.errors import ConfigurationError
from aicm_tasks.settings import Settings
from aicm_tasks.worker.events import TaskEvents
from aicm_tasks.worker.limits import LimitsKeeper, api_key_id, poll_limits
from aicm_tasks.worker.metrics import Metrics
from aicm_tasks.worker.observe import Observer, RedisFigures
from aicm_tasks.worker.rabbitmq_service import RabbitDeliveryService, build_rabbitmq_service
from aicm_tasks.worker.retry import BackoffPolicy
from aicm_tasks.worker.service import MAX_WAIT_S, DeliveryService
from aicm_tasks.worker.transport import TrackTransport

logger = logging.getLogger(__name__)

#: Exit code of a worker refused for a bad or missing setting (as the CLI's).
EXIT_BAD_SETTING = 2

#: Seconds a worker waits for in-flight batches at warm shutdown before it
#: hands the rest back to the queue.
SHUTDOWN_GRACE_S = 30.0


class DeliveryStep(bootsteps.StartStopStep):
    """Starts the delivery threads with the worker and stops them with it."""

    requires = ("celery.worker.components:Pool",)

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        self.settings: Settings = worker.app.aicm_settings
        self.service: DeliveryService | RabbitDeliveryService | None = None
        self.events: TaskEvents | None = None
        # Celery's consumer must not take records one by one: it would race the
        # bulk reader and acknowledge what it cannot process. The queue is not in
        # app.amqp.queues (app.py) unless named with `worker -Q`, which adds it.
        queues = worker.app.amqp.queues
        if self.settings.queue in queues:
            queues.deselect(self.settings.queue)

    def start(self, worker: Any) -> None:
        try:
            require_api_key(self.settings)
        except ConfigurationError as exc:
            # One line, not Celery's "Unrecoverable error" traceback: Worker.start
            # stops the worker with a SystemExit's code and nothing more.
            logger.critical("%s", exc)
            raise SystemExit(EXIT_BAD_SETTING) from None
        # httpx logs every request at INFO; at a POST per batch that drowns the
        # worker's own one line per batch. Quiet it unless configured already.
        httpx_logger = logging.getLogger("httpx")
        if httpx_logger.level == logging.NOTSET:
            httpx_logger.setLevel(logging.WARNING)
        observers: list[Observer] = []
        if self.settings.metrics_port is not None:
            metrics = Metrics(queue=self.settings.queue)
            metrics.serve(self.settings.metrics_port)
            observers.append(metrics)
            logger.info("metrics on :%d/metrics", self.settings.metrics_port)
        if self.settings.events_enabled:
            self.events = TaskEvents(
                worker.app,
                worker.hostname,
                show_payloads=self.settings.events_show_payloads,
                queue=self.settings.queue,
            )
            observers.append(self.events)
        # The one switch between the brokers that carry records (settings.py).
        build = build_rabbitmq_service if self.settings.records_on_rabbitmq else build_service
        self.service = build(self.settings, extra_observers=observers, name=worker.hostname)
        try:
            self.service.start()
        except ConfigurationError as exc:  # a queue RabbitMQ holds with other arguments
            logger.critical("%s", exc)
            raise SystemExit(EXIT_BAD_SETTING) from None

    def stop(self, worker: Any) -> None:
        if self.service is not None:
            self.service.stop(SHUTDOWN_GRACE_S)
            self.service = None
        if self.events is not None:
            self.events.close()
            self.events = None

    def shutdown(self, worker: Any) -> None:
        self.stop(worker)


def build_service(
    settings: Settings, *, extra_observers: Sequence[Observer] = (), **overrides: Any
) -> DeliveryService:
    """Build the delivery service a worker process runs, from settings."""
    require_api_key(settings)
    default_key = settings.api_key.get_secret_value() if settings.api_key else ""
    topology = connect(
        settings,
        socket_connect_timeout=5.0,
        # Longer than the longest blocking wait (BLMOVE), so a wait never times out
        # on the socket, yet a blackholed Redis is noticed.
        socket_timeout=MAX_WAIT_S + 10.0,
        socket_keepalive=True,
        health_check_interval=30,
    )
    if len(topology.shards) > 1 or topology.cluster:
        log_placement(topology)
    keys = {alias: key.get_secret_value() for alias, key in settings.api_keys.items()}
    keys_by_source = {DEFAULT_SOURCE: default_key, **keys} if default_key else keys
    # Every answer's triggered limits are kept, limits enabled or not: they cost
    # nothing to read, and producers that enable limits need the set the moment
    # they do. Only the GET /triggered-limits poll waits for AICM_LIMITS_ENABLED.
    # One limits set for the whole pipeline, on shard 0 (every producer reads it there).
    shard_zero = topology.stores[0]
    keeper = LimitsKeeper(
        LimitStore(shard_zero.client, shard_zero.keys),
        key_ids={source: api_key_id(key) for source, key in keys_by_source.items()},
        pinned_public_key=settings.limits_public_key,
    )
    transport = TrackTransport(
        settings.track_url,
        default_key or None,
        keys=keys,
        timeout_s=settings.http_timeout_s,
        max_connections=settings.delivery_concurrency,
        on_limits=keeper.accept,
    )
    options: dict[str, Any] = {
        "batch_size": settings.batch_size,
        "flush_interval_s": settings.flush_interval_s,
        "concurrency": settings.delivery_concurrency,
        "policy": BackoffPolicy(settings.retry_base_s, settings.retry_max_s, settings.max_retries),
        "auth_retry_interval_s": settings.auth_retry_interval_s,
        "redelivery_timeout_s": settings.redelivery_timeout_s,
    }
    stores = topology.stores
    # The last errors go to the first shard: figures, not records, so a shard
    # that is down costs a blank figure at worst (status sums every shard).
    # Each shard's Redis settings go to that shard.
    figures = RedisFigures(
        stores[0].client, stores[0].keys, [(store.client, store.keys) for store in stores]
    )
    options["observers"] = [figures, *extra_observers]
    options["aliases"] = {alias: transport.sender(alias) for alias in transport.aliases}
    # Its pooled connections are closed when the service stops (not at exit):
    # a worker stopped and started again by Celery builds a new transport.
    options["on_stopped"] = [transport.close]
    if settings.limits_enabled:
        options["background"] = [
            functools.partial(
                poll_limits,
                keeper,
                transport.get_triggered_limits,
                transport.sources,
                interval_s=settings.limits_poll_interval_s,
            )
        ]
    options.update(overrides)
    return DeliveryService(stores, transport.poster(), **options)


def log_placement(topology: Topology) -> None:
    """Which server holds which shard, and a warning when some hold two or more
    shards than others: the load follows the shards, and on Redis Cluster a
    shard's slot is decided by its hash tag, not by the cluster's layout."""
    placed = topology.shards_per_server()
    listing = "; ".join(
        f"{server}: {shards or 'none'}" for server, shards in sorted(placed.items())
    )
    logger.info("shards by Redis server: %s", listing)
    if uneven(placed):
        logger.warning(
            "shards are spread unevenly over the Redis servers (%s): move their slots "
            "(redis-cli --cluster reshard; CLUSTER KEYSLOT names each shard's) or raise "
            "AICM_SHARDS, see docs/how-it-works.md#shards",
            listing,
        )


def require_api_key(settings: Settings) -> None:
    """Raise :class:`ConfigurationError` unless the settings hold a /track key."""
    default_key = settings.api_key.get_secret_value() if settings.api_key else ""
    if not default_key and not settings.api_keys:
        raise ConfigurationError(
            "AICM_API_KEY is not set: the worker needs the /track API key "
            "(producers do not). Set it (or AICM_API_KEYS) in the worker's environment."
        )


@control.inspect_command(name="active_queues")
def active_queues(state: Any) -> list[dict[str, Any]]:
    """List the queues a worker consumes, the tracking queue included.

    Replaces Celery's own command (same name, same shape): Celery's consumer no
    longer reads the tracking queue (the delivery step does), yet tools that
    ask workers what they consume, Flower's broker view among them, must still
    see it and its length.
    """
    consumer = state.consumer
    queues = (
        [dict(queue.as_dict(recurse=True)) for queue in consumer.task_consumer.queues]
        if consumer.task_consumer
        else []
    )
    queue = tracking_queue(consumer.app)
    if queue is not None and all(q.get("name") != queue.name for q in queues):
        queues.append(dict(queue.as_dict(recurse=True)))
    return queues


def tracking_queue(app: Any) -> Any:
    """The tracking queue as Celery would describe it (a kombu ``Queue`` with its
    exchange), from its declaration in ``conf.task_queues``; None when ``app``
    carries no aicm-tasks settings or does not declare it.

    Not in ``app.amqp.queues`` (kept out so ``celery purge`` spares it, see
    app.py), so described as Celery would from the declaration. Used where the
    worker shows what it consumes: ``inspect active_queues`` and its banner
    (worker/banner.py).
    """
    tracking: Settings | None = getattr(app, "aicm_settings", None)
    if tracking is None:
        return None
    declared = [q for q in app.conf.task_queues or () if q.name == tracking.queue]
    if not declared:
        return None
    return app.amqp.Queues(declared)[tracking.queue]
