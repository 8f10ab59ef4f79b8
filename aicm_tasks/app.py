"""The Celery app: queues, routing and the durability settings, each argued.

``celery -A aicm_tasks worker`` finds :data:`app` here (through the package).
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.app.amqp import AMQP
from kombu import Exchange, Queue
from kombu.utils.objects import cached_property

from aicm_tasks.broker.rabbitmq.names import RabbitNames, is_rabbitmq_url
from aicm_tasks.settings import Settings
from aicm_tasks.tasks import TrackTask
from aicm_tasks.worker.bootstep import DeliveryStep

#: Queue for ordinary Celery tasks (none are needed for delivery). Not Celery's
#: default ``celery``: a user's own Celery app on the same Redis uses that one,
#: and a worker of this app would take its tasks and drop them as unregistered.
DEFAULT_TASK_QUEUE = "aicm.tasks"


class TrackingQueueAMQP(AMQP):
    """Celery's queue bookkeeping, with the tracking queue left out of ``amqp.queues``.

    ``celery purge`` deletes every queue in ``app.amqp.queues`` and
    ``app.control.purge()`` every queue Celery's consumer reads; with the
    tracking queue among them, a habitual ``celery -A aicm_tasks purge -f``
    would delete every queued billing record. It stays declared in
    ``conf.task_queues`` (what Flower reads when no worker answers) and workers
    report it in ``inspect active_queues`` (see worker/bootstep.py), so both still
    show it. Only naming it (``celery purge -Q aicm.tracking``) deletes it.
    """

    @cached_property
    def queues(self) -> Any:
        """Queue name ⇒ declaration, without the tracking queue."""
        settings: Settings | None = getattr(self.app, "aicm_settings", None)
        tracking = settings.queue if settings is not None else None
        declared = [q for q in self.app.conf.task_queues or () if q.name != tracking]
        return self.Queues(declared)


class AicmCelery(Celery):
    """A Celery app that carries the aicm-tasks :class:`Settings`."""

    aicm_settings: Settings
    amqp_cls = f"{__name__}:TrackingQueueAMQP"

    @cached_property
    def Worker(self) -> Any:
        """``celery worker``'s worker: Celery's, with the tracking queue in its
        banner (worker/banner.py). By name, so importing the app stays cheap."""
        # Celery takes a class or its dotted name; celery-types only knows the class.
        return self.subclass_with_self("aicm_tasks.worker.banner:TrackingWorker")  # type: ignore[arg-type]


def create_app(settings: Settings | None = None) -> AicmCelery:
    """Build the Celery app for the given settings (default: from the environment)."""
    settings = settings or Settings.from_env()
    # Not set as Celery's current app: importing aicm_tasks in a process that has
    # its own Celery app (Django + Celery) must not rebind that app's
    # ``@shared_task`` tasks to ours. ``celery -A aicm_tasks`` makes it current
    # in its own process anyway.
    app = AicmCelery("aicm_tasks", broker=settings.broker_url, set_as_current=False)
    app.aicm_settings = settings
    app.conf.update(
        # Declared here so Celery tools (Flower's broker view, `celery inspect`)
        # know the tracking queue even while no worker runs; left out of
        # app.amqp.queues (TrackingQueueAMQP) so `celery purge` leaves it alone.
        task_queues=task_queues(settings),
        task_default_queue=DEFAULT_TASK_QUEUE,
        task_routes={TrackTask.name: {"queue": settings.queue}},
        # Delivery runs in threads of the worker's main process (see worker/bootstep.py);
        # the Celery pool only serves ordinary tasks, so a small thread pool is
        # enough and keeps the worker one process (one httpx pool, one lease).
        worker_pool="threads",
        worker_concurrency=2,
        # Ordinary tasks on this app are acknowledged after they run and requeued
        # if the process dies: the same at-least-once stance as the records.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        # See transport_options below.
        broker_transport_options=transport_options(settings),
        # Ordinary tasks sent through Celery (not track, which has its own bounded
        # path) also give up instead of hanging a web request: a bounded wait for
        # a pooled connection, bounded reconnect attempts and socket timeouts.
        broker_pool_acquire_timeout=settings.publish_timeout_s,
        task_publish_retry_policy={
            "max_retries": 2,
            "interval_start": 0,
            "interval_step": 0.2,
            "interval_max": 0.2,
        },
        # A worker keeps trying to reach the broker for as long as it is down.
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        task_ignore_result=True,
        # Events on by default so Flower sees workers and the delivery work with
        # no extra flags: delivery sends three events per batch (not per record)
        # in one PUBLISH. See docs/monitoring.md and worker/events.py.
        worker_send_task_events=True,
        task_send_sent_event=True,
        worker_hijack_root_logger=True,
    )
    if is_rabbitmq_url(settings.broker_url):
        app.conf.update(
            # Celery's own tasks of this app on a quorum queue too (declared from
            # task_queues, whose aicm.tasks entry says so: this setting alone
            # applies only without task_queues); seeing it, the worker turns
            # global QoS off, which quorum queues refuse.
            task_default_queue_type="quorum",
            worker_detect_quorum_queues=True,
        )
    # A subclass per app: Celery's Task.bind() binds the *class* to an app, so
    # two apps in one process (tests, the demo) would otherwise share the last one.
    app.register_task(type("TrackTask", (TrackTask,), {"__module__": TrackTask.__module__})())
    app.steps["worker"].add(DeliveryStep)
    return app


def task_queues(settings: Settings) -> list[Queue]:
    """The app's queues: the tracking queue, then ``aicm.tasks``.

    On RabbitMQ both are quorum queues, and the tracking queue carries exactly
    the arguments and binding the transport declares
    (:func:`~aicm_tasks.broker.rabbitmq.topology.declare_topology`): a Celery
    tool that declares it with any other would get 406 PRECONDITION_FAILED.
    """
    if not is_rabbitmq_url(settings.broker_url):
        return [
            Queue(settings.queue, routing_key=settings.queue),
            Queue(DEFAULT_TASK_QUEUE, routing_key=DEFAULT_TASK_QUEUE),
        ]
    # A topic exchange: Celery's native delayed delivery (its countdowns on
    # quorum queues) binds only those, and warns for a direct one.
    tasks = Queue(
        DEFAULT_TASK_QUEUE,
        Exchange(DEFAULT_TASK_QUEUE, type="topic", durable=True),
        routing_key=DEFAULT_TASK_QUEUE,
        durable=True,
        queue_arguments={"x-queue-type": "quorum"},
    )
    if not settings.records_on_rabbitmq:  # records on Redis shards; RabbitMQ is Celery's only
        return [Queue(settings.queue, routing_key=settings.queue), tasks]
    names = RabbitNames(settings.queue, settings.key_prefix)
    tracking = Queue(
        names.queue,
        Exchange(names.records_exchange, type="topic", durable=True),
        routing_key=names.queue,
        durable=True,
        queue_arguments=names.record_queue_arguments(),
    )
    return [tracking, tasks]


def transport_options(settings: Settings) -> dict[str, Any]:
    """kombu's transport options for the broker of ``settings``.

    Redis: our leases use AICM_REDELIVERY_TIMEOUT_S, and kombu's own unacked
    restore for ordinary tasks uses the same figure so both redeliver alike;
    bounded socket waits. RabbitMQ: publisher confirms, which Celery's docs ask
    for with quorum queues (one round trip per task sent: ordinary tasks only,
    records have their own path); the Redis options mean nothing there.
    """
    if is_rabbitmq_url(settings.broker_url):
        return {"confirm_publish": True, "max_retries": 2}
    return {
        "visibility_timeout": settings.redelivery_timeout_s,
        "socket_connect_timeout": settings.publish_timeout_s,
        "socket_timeout": max(settings.publish_timeout_s, 5.0),
        "max_retries": 2,
    }
