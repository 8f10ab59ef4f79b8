"""Celery task events for Flower: each settled batch shows as one task.

Records never pass through Celery's consumer, so Celery sends no events for
them; this observer sends three events per settled batch, for a task named
``aicm_tasks.deliver_batch``, the same three Celery sends for a task it runs:

``task-received``, ``task-started``, then the event of the batch's outcome:

==========================================  ==================  =============
batch                                       last event          Flower state
==========================================  ==================  =============
every record delivered                      ``task-succeeded``  SUCCESS
a record dead-lettered (whatever the rest)  ``task-failed``     FAILURE
else a record scheduled for retry           ``task-retried``    RETRY
==========================================  ==================  =============

A retried batch stays RETRY: its rescheduled records come back in another
batch, which is another task. ``task-started`` is what brings Flower's
``flower_worker_prefetched_tasks`` gauge back down (``task-received`` raises
it). Every last event carries the counts as ``result`` and the batch's
``runtime``; a failed or retried one also says why in ``exception`` and
``traceback`` (reasons, counts, the retry's detail as logged, a few
response_ids; never a payload or a key). docs/monitoring.md shows the same.

The three events go out as one message (the dispatcher's buffering of the
``task`` group, flushed per batch, as Celery's own worker does), so a batch
costs one PUBLISH, not three: measured on the local Redis, a median 0.19 ms of
CPU (0.40 ms wall) per 500-record batch, against 0.24 ms (0.53 ms) for the two
events this sent as two PUBLISHes before.

A broker whose settings may evict records is shown too, as a failed
``aicm_tasks.check_broker`` task per check (see ``redis_settings_read``).

What a task shows of its records is safe by default: record count, service keys,
response_ids and customer keys (a few of each), never the usage payload or
context unless ``AICM_EVENTS_SHOW_PAYLOADS`` is on, and never the API key.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections import Counter
from typing import Any

from celery import Celery

from aicm_tasks.broker.messages import Item, record_of
from aicm_tasks.broker.redis_settings import BrokerSettings, Finding
from aicm_tasks.settings import DEFAULT_QUEUE
from aicm_tasks.worker.delivery import Summary
from aicm_tasks.worker.observe import BatchReport, Observer

logger = logging.getLogger(__name__)

#: The task name under which Flower lists delivered batches.
TASK_NAME = "aicm_tasks.deliver_batch"
#: The task name under which Flower lists a failed check of the broker's settings.
CHECK_TASK_NAME = "aicm_tasks.check_broker"
#: The "exception class" of that failure.
BROKER_MAY_LOSE = "BrokerMayLoseRecords"
#: How many response_ids / customer keys / payloads a task shows at most.
SHOWN = 10
#: The last event of a batch, by outcome (see the module docstring).
SUCCEEDED, RETRIED, FAILED = "task-succeeded", "task-retried", "task-failed"
#: The "exception class" a failed / retried batch shows: Celery sends
#: ``repr(exc)``, and tools read the name before the parenthesis (celery-exporter
#: labels ``celery_task_failed_total`` with it).
DEAD_LETTERED, RETRY_SCHEDULED = "DeadLettered", "RetryScheduled"
#: Longest retry detail a task shows, in characters (the log line has it all).
DETAIL_CHARS = 200
#: More than the three events of a batch: the buffer is flushed per batch, never
#: by filling up halfway through one.
BUFFER_LIMIT = 64

Event = tuple[str, dict[str, Any]]


class TaskEvents(Observer):
    """Sends a settled batch as task events from the worker's hostname."""

    def __init__(
        self,
        app: Celery,
        hostname: str,
        *,
        show_payloads: bool = False,
        queue: str = DEFAULT_QUEUE,
    ) -> None:
        self.app = app
        self.hostname = hostname
        self.show_payloads = show_payloads
        self.queue = queue
        self._lock = threading.Lock()  # a kombu producer is not thread-safe
        self._dispatcher: Any = None

    def batch_settled(self, report: BatchReport) -> None:
        events = batch_events(
            report, uuid.uuid4().hex, show_payloads=self.show_payloads, queue=self.queue
        )
        with self._lock:
            dispatcher = self._get_dispatcher()
            try:
                for type_, fields in events:
                    dispatcher.send(type_, **fields)
                dispatcher.flush()
            except Exception:
                self._close()  # a fresh connection (and an empty buffer) next time
                raise

    def redis_settings_read(
        self, settings: BrokerSettings, findings: list[Finding], shard: int = 0
    ) -> None:
        """A broker that may evict records shows in Flower as a failed task.

        Flower knows nothing of Redis's settings, and an operator who watches
        only Flower must still learn that records can vanish: while a finding
        is an error (``allkeys-*``), each check (every minute, per worker) is a
        failed ``aicm_tasks.check_broker`` task whose exception names it.
        """
        errors = [finding.message for finding in findings if finding.level == "error"]
        if not errors:
            return
        with self._lock:
            dispatcher = self._get_dispatcher()
            try:
                for type_, fields in broker_check_events(uuid.uuid4().hex, errors):
                    dispatcher.send(type_, **fields)
                dispatcher.flush()
            except Exception:
                self._close()
                raise

    def _get_dispatcher(self) -> Any:
        if self._dispatcher is None:
            connection = self.app.connection_for_write()
            self._dispatcher = self.app.events.Dispatcher(
                connection,
                hostname=self.hostname,
                enabled=True,
                buffer_group=["task"],
                buffer_limit=BUFFER_LIMIT,
                # Raise instead of keeping unsent events in a buffer nobody
                # flushes: the dispatcher is then replaced (see batch_settled).
                buffer_while_offline=False,
            )
            _reuse_redis_client(self._dispatcher)
        return self._dispatcher

    def _close(self) -> None:
        if self._dispatcher is not None:
            try:
                self._dispatcher.close()
                self._dispatcher.connection.close()
            except Exception:
                logger.debug("closing the event dispatcher failed", exc_info=True)
            self._dispatcher = None

    def close(self) -> None:
        with self._lock:
            self._close()


def broker_check_events(task_id: str, errors: list[str]) -> list[Event]:
    """The events of a failed broker check: received, started, failed with
    ``BrokerMayLoseRecords('<the findings>')``."""
    now = time.time()
    text = "; ".join(errors)
    return [
        (
            "task-received",
            {"uuid": task_id, "name": CHECK_TASK_NAME, "args": "()", "kwargs": "{}",
             "retries": 0, "eta": None, "root_id": task_id, "parent_id": None,
             "timestamp": now},
        ),
        ("task-started", {"uuid": task_id, "timestamp": now}),
        (
            FAILED,
            {"uuid": task_id, "exception": f"{BROKER_MAY_LOSE}({text!r})",
             "traceback": f"{BROKER_MAY_LOSE}: {text}\nSee docs/guarantees.md and "
             "`aicm-tasks status`.", "timestamp": now},
        ),
    ]  # fmt: skip


def outcome_event(summary: Summary) -> str:
    """The event that ends a batch's task: failed if a record was dead-lettered,
    else retried if one was rescheduled, else succeeded."""
    if any(summary.dead_lettered.values()):
        return FAILED
    if summary.retried:
        return RETRIED
    return SUCCEEDED


def batch_events(
    report: BatchReport, task_id: str, *, show_payloads: bool, queue: str = DEFAULT_QUEUE
) -> list[Event]:
    """The three events of one settled batch, in the order they are sent.

    ``queue`` (the tracking queue) rides on ``task-received`` as on Celery's
    ``task-sent``: event consumers that label by queue (celery-exporter's
    ``queue_name``) then name it instead of falling back to ``celery``."""
    summary = report.summary
    finished = time.time()
    started = finished - report.elapsed_s
    received: dict[str, Any] = {
        "uuid": task_id,
        "name": TASK_NAME,
        "args": "()",
        "kwargs": json.dumps(describe(report.items, show_payloads)),
        "retries": 0,
        "eta": None,
        "root_id": task_id,
        "parent_id": None,
        "queue": queue,
        "timestamp": started,
    }
    last = outcome_event(summary)
    ended: dict[str, Any] = {
        "uuid": task_id,
        "result": json.dumps(
            {
                "delivered": summary.delivered,
                "retried": summary.retried,
                "dead_lettered": summary.dead_lettered,
                "requests": summary.requests,
            }
        ),
        "runtime": report.elapsed_s,
        "timestamp": finished,
    }
    if last != SUCCEEDED:
        ended["exception"], ended["traceback"] = explain(summary)
    return [
        ("task-received", received),
        ("task-started", {"uuid": task_id, "timestamp": started}),
        (last, ended),
    ]


def explain(summary: Summary) -> tuple[str, str]:
    """Why a batch failed or was retried: a one-line ``exception`` (in the shape
    of Celery's ``repr(exc)``) and a longer ``traceback``. Reasons, counts, the
    retry's detail (cut to ``DETAIL_CHARS``) and a few response_ids only."""
    dead = {reason: n for reason, n in summary.dead_lettered.items() if n}
    total = summary.delivered + summary.retried + sum(dead.values())
    detail = summary.retry_detail[:DETAIL_CHARS]
    parts: list[str] = []
    lines: list[str] = []
    if dead:
        reasons = ", ".join(f"{reason}: {n}" for reason, n in sorted(dead.items()))
        parts.append(f"{sum(dead.values())} of {total} records dead-lettered ({reasons})")
        lines.append(
            f"dead-lettered ({reasons}): response_ids {_some(summary.dead_lettered_ids)}; "
            "see `aicm-tasks dlq list`"
        )
    if summary.retried:
        parts.append(f"{summary.retried} of {total} records scheduled for retry ({detail})")
        what = "kept, tried again" if summary.unauthorized else "scheduled for retry"
        lines.append(f"{what} ({detail}): response_ids {_some(summary.retried_ids)}")
        if summary.unauthorized:
            lines.append("the /track API refused the API key: check AICM_API_KEY")
    parts.append(f"{summary.delivered} delivered")
    lines.append(f"delivered: {summary.delivered} in {summary.requests} requests")
    name = DEAD_LETTERED if dead else RETRY_SCHEDULED
    return f"{name}({'; '.join(parts)!r})", "\n".join(lines)


def _some(ids: tuple[str, ...]) -> str:
    shown = ", ".join(ids[:SHOWN])
    return shown + (f" and {len(ids) - SHOWN} more" if len(ids) > SHOWN else "")


def describe(items: list[Item] | Any, show_payloads: bool) -> dict[str, Any]:
    """What Flower shows of a batch's records (safe by default): counts by
    service key, and the response_ids and customer keys (and, when
    ``show_payloads``, the payloads) of the first ``SHOWN`` records."""
    services = Counter(item.service_key for item in items)
    customers: list[str] = []
    payloads: list[dict[str, Any]] = []
    # Only the first records are read in full: reading all 500 of a batch cost
    # a fifth of the worker's CPU.
    for item in items[:SHOWN]:
        record = record_of(item) or {}
        customer = record.get("customer_key")
        if isinstance(customer, str) and customer not in customers:
            customers.append(customer)
        if show_payloads:
            payloads.append({"payload": record.get("payload"), "context": record.get("context")})
    shown: dict[str, Any] = {
        "records": len(items),
        "service_keys": dict(services.most_common(SHOWN)),
        "response_ids": [item.response_id for item in items[:SHOWN]],
        "customer_keys": customers,
    }
    if show_payloads:
        shown["payloads"] = payloads
    return shown


def _reuse_redis_client(dispatcher: Any) -> None:
    """Make the dispatcher's private kombu channel reuse one redis-py client.

    kombu 5.7's Redis transport builds a new ``redis.Redis`` object for every
    fanout publish: over 40 % of an event's cost, which cost about a fifth of
    the worker's delivery rate. This channel is ours alone and used under a
    lock, so one client is safe. Other transports are left as they are.
    """
    channel = getattr(getattr(dispatcher, "producer", None), "channel", None)
    create = getattr(channel, "_create_client", None)
    if channel is None or create is None:
        return
    client = create()

    def cached(asynchronous: bool = False) -> Any:
        return create(asynchronous=True) if asynchronous else client

    channel._create_client = cached
