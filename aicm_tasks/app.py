"""The Celery app: queues, routing and the durability settings, each argued.

``celery -A aicm_tasks worker`` finds :data:`app` here (through the package).
"""

from __future__ import annotations

import copy
from typing import Any

from celery import Celery
from celery.app.amqp import AMQP, Queues
from kombu import Queue
from kombu.utils.objects import cached_property

from aicm_tasks.settings import Settings
from aicm_tasks.tasks import TrackTask
from aicm_tasks.worker.bootstep import DeliveryStep

#: Queue for ordinary Celery tasks (none are needed for delivery). Not Celery's
#: default ``celery``: a user's own Celery app on the same Redis uses that one,
#: and a worker of this app would take its tasks and drop them as unregistered.
DEFAULT_TASK_QUEUE = "aicm.tasks"


#: The banner line of the tracking queue: Celery's own (celery.app.amqp.QUEUE_FORMAT,
#: not in its type stubs), and who reads it.
BANNER_LINE = (
    ".> {0.name:<16} exchange={0.exchange.name}({0.exchange.type}) key={0.routing_key}"
    "  (records: read in bulk by the delivery step)"
)


class BannerQueues(Queues):
    """Celery's queue table, whose banner lines also name the tracking queue.

    The worker banner's ``[queues]`` is ``app.amqp.queues.format()``; the
    tracking queue is left out of that table (see :class:`TrackingQueueAMQP`)
    yet every worker of this app consumes it, through the delivery step.
    """

    #: The tracking queue's declaration, set by :class:`TrackingQueueAMQP`.
    tracking: Queue | None = None

    def format(self, indent: int = 0, indent_first: bool = True) -> str:
        listed = super().format(indent, indent_first)
        if self.tracking is None:
            return listed
        line = BANNER_LINE.format(self.tracking)
        listed = listed.rstrip("\n")  # Celery's own ends in one when it lists one queue
        return f"{listed}\n{' ' * indent}{line}" if listed else line


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

    queues_cls = BannerQueues

    @cached_property
    def queues(self) -> Any:
        """Queue name ⇒ declaration, without the tracking queue (which only the
        banner lines name)."""
        settings: Settings | None = getattr(self.app, "aicm_settings", None)
        tracking = settings.queue if settings is not None else None
        declared = [q for q in self.app.conf.task_queues or () if q.name != tracking]
        queues = self.Queues(declared)
        named = [q for q in self.app.conf.task_queues or () if q.name == tracking]
        if named and isinstance(queues, BannerQueues):
            # Through Queues, as Celery would, so the line shows its default exchange;
            # a copy, since Queues sets that exchange on the object it is given.
            queues.tracking = self.Queues([copy.copy(named[0])])[named[0].name]
        return queues


class AicmCelery(Celery):
    """A Celery app that carries the aicm-tasks :class:`Settings`."""

    aicm_settings: Settings
    amqp_cls = f"{__name__}:TrackingQueueAMQP"


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
        task_queues=[
            Queue(settings.queue, routing_key=settings.queue),
            Queue(DEFAULT_TASK_QUEUE, routing_key=DEFAULT_TASK_QUEUE),
        ],
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
        # Our leases use AICM_REDELIVERY_TIMEOUT_S; kombu's own unacked restore
        # for ordinary tasks uses the same figure so both redeliver alike.
        broker_transport_options={
            "visibility_timeout": settings.redelivery_timeout_s,
            "socket_connect_timeout": settings.publish_timeout_s,
            "socket_timeout": max(settings.publish_timeout_s, 5.0),
            "max_retries": 2,
        },
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
        # no extra flags: one small PUBLISH per event; delivery sends three per
        # batch (not per record). See docs/monitoring.md.
        worker_send_task_events=True,
        task_send_sent_event=True,
        worker_hijack_root_logger=True,
    )
    # A subclass per app: Celery's Task.bind() binds the *class* to an app, so
    # two apps in one process (tests, the demo) would otherwise share the last one.
    app.register_task(type("TrackTask", (TrackTask,), {"__module__": TrackTask.__module__})())
    app.steps["worker"].add(DeliveryStep)
    return app
