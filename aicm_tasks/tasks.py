"""``track``: the Celery task users call; a thin adapter over :mod:`aicm_tasks.producer.api`.

``track.delay(service_key, usage, ...)`` validates the record in the caller's
process, gives it its identity and publishes it in one round trip; the
returned ``AsyncResult.id`` is the record's ``response_id``.
"""

from __future__ import annotations

import math
import numbers
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any, Protocol, cast

from celery import Task
from celery.result import AsyncResult

from aicm_tasks.errors import RecordTypeError, RecordValueError
from aicm_tasks.producer.api import Producer
from aicm_tasks.producer.publisher import Publisher
from aicm_tasks.producer.record import Record
from aicm_tasks.settings import Settings

#: ``apply_async`` options that have no meaning for a record and are accepted
#: (and ignored) so that code written for ordinary Celery tasks keeps working.
IGNORED_OPTIONS = frozenset(
    {
        "priority",
        "serializer",
        "compression",
        "headers",
        "routing_key",
        "exchange",
        "ignore_result",
        "time_limit",
        "soft_time_limit",
        "add_to_parent",
        "link",
        "link_error",
        "shadow",
        "producer",
        "connection",
        "retry",
        "retry_policy",
        "expires",
        "queue",
        "declare",
        "exchange_type",
        "delivery_mode",
        "mandatory",
        "immediate",
        "reply_to",
        "correlation_id",
        "group_id",
        "group_index",
        "chord",
    }
)


class _AppWithSettings(Protocol):
    """What this task reads of its app, an ``app.AicmCelery`` (which imports this
    module, so it cannot be named here)."""

    aicm_settings: Settings


class TrackTask(Task[..., str]):
    """The ``aicm_tasks.track`` task: publish one usage record."""

    name = "aicm_tasks.track"
    ignore_result = True
    typing = False
    _producer: Producer | None = None

    @property
    def settings(self) -> Settings:
        return cast(_AppWithSettings, self.app).aicm_settings

    @property
    def producer(self) -> Producer:
        """Builds and publishes this task's records: one per task, so ``track.delay``,
        ``track_async`` and ``CeleryDelivery`` share its publisher and spool."""
        if self._producer is None:
            self._producer = Producer(self.settings)
        return self._producer

    @property
    def publisher(self) -> Publisher:
        """The producer's publisher (its Redis pool and spool)."""
        return self.producer.publisher

    def run(self, *args: Any, **kwargs: Any) -> str:
        """Runs only if an ordinary Celery message for this task reaches a worker
        (sent with ``send_task`` from elsewhere): hand the record to the queue."""
        return str(self.apply_async(args, kwargs).id)

    def delay(self, *args: Any, **kwargs: Any) -> AsyncResult[Any]:
        """Publish one record: ``delay(service_key, usage, *, response_id=None,
        timestamp=None, customer_key=None, context=None, api_key_alias=None,
        anonymize_fields=None, anonymizer=None)``, or the older
        ``delay(api_id, service_id, usage, ...)``. ``anonymize_fields`` names
        payload and context fields whose values are replaced before publishing,
        besides ``AICM_ANONYMIZE_FIELDS`` (docs/anonymization.md)."""
        return self.apply_async(args, kwargs)

    # Not Celery's signature, on purpose: countdown and eta come fourth and fifth
    # (Celery has producer, link, link_error, shadow there and takes them by
    # keyword only); kept as callers know it, and every other option is checked
    # against IGNORED_OPTIONS below.
    def apply_async(  # type: ignore[override]
        self,
        args: Iterable[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        task_id: str | None = None,
        countdown: float | Decimal | None = None,
        eta: datetime | None = None,
        **options: Any,
    ) -> AsyncResult[Any]:
        """Publish one record, with Celery's calling options.

        ``task_id`` becomes the ``response_id`` when none is given; ``countdown``
        (seconds, finite) and ``eta`` (a datetime; naive means UTC, as Celery's
        default ``enable_utc``) defer delivery; other Celery options are accepted
        and have no effect on a record. An unknown option, or a countdown or eta
        that is not one, raises :class:`RecordTypeError` / :class:`RecordValueError`
        and publishes nothing.
        """
        unknown = set(options) - IGNORED_OPTIONS
        if unknown:
            raise RecordTypeError(
                "options", f"track.apply_async() got unknown options: {', '.join(sorted(unknown))}"
            )
        fields = dict(kwargs or {})
        if task_id is not None:
            given = fields.get("response_id")
            if given is not None and given != task_id:
                raise RecordValueError(
                    "response_id", f"{given!r} differs from task_id {task_id!r}; give one of them"
                )
            fields["response_id"] = task_id
        record = self.producer.build(tuple(args or ()), fields)
        self.producer.publish(record, due_epoch_s=_due_epoch_s(countdown, eta))
        return self.AsyncResult(record.response_id)

    def many(
        self,
        records: Iterable[Mapping[str, Any]],
        *,
        anonymize_fields: Iterable[str] | None = None,
        anonymizer: Callable[[Any], Any] | None = None,
    ) -> list[str]:
        """Publish many records in one broker round trip; returns their response_ids.

        Each mapping holds the keyword fields of :meth:`delay`: ``service_key``,
        ``usage``, and optionally ``response_id``, ``timestamp``,
        ``customer_key``, ``context``, ``api_key_alias``. Every record is validated before any is
        published: one bad record raises (its index in the message) and none
        is published. ``anonymize_fields`` / ``anonymizer`` add to
        ``AICM_ANONYMIZE_FIELDS`` for these records (docs/anonymization.md).
        """
        built = self.producer.build_many(
            records, anonymize_fields=anonymize_fields, anonymizer=anonymizer
        )
        self.producer.publish_many(built)
        return [record.response_id for record in built]

    def build_many(self, records: Iterable[Mapping[str, Any]]) -> list[Record]:
        """Validate many records as :meth:`many` does (nothing is published)."""
        return self.producer.build_many(records)

    def build(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], *, max_bytes: int | None = None
    ) -> Record:
        """Validate call arguments into a :class:`Record` (nothing is published).

        ``max_bytes`` defaults to ``AICM_MAX_RECORD_BYTES``."""
        return self.producer.build(args, kwargs, max_bytes=max_bytes)


def _due_epoch_s(countdown: Any, eta: Any) -> float | None:
    """When a deferred record is due (epoch seconds), None for now.

    Checked like a record's fields, before anything is published: a countdown
    of ``inf`` would have parked the record in the scheduled set for good (no
    due time is ever reached), ``nan`` would have sent it at once, and a string
    would have raised an ``AttributeError`` from deep inside.
    """
    if countdown is not None and eta is not None:
        raise RecordTypeError("countdown", "give countdown or eta, not both")
    if countdown is not None:
        # numbers.Real takes NumPy's numbers too; bool is an int, never a delay.
        if isinstance(countdown, bool) or not isinstance(countdown, numbers.Real | Decimal):
            raise RecordTypeError(
                "countdown", f"must be a number of seconds, not {type(countdown).__name__}"
            )
        try:
            seconds = float(countdown)
        except (OverflowError, ValueError):  # an int past float's range, Decimal('sNaN')
            seconds = math.inf
        if not math.isfinite(seconds) or time.time() + seconds > MAX_DUE_EPOCH_S:
            raise RecordValueError(
                "countdown", f"{seconds:g} s is not finite or ends past the year 9999"
            )
        return time.time() + seconds if seconds > 0 else None
    if eta is not None:
        if not isinstance(eta, datetime):
            raise RecordTypeError("eta", f"must be a datetime, not {type(eta).__name__}")
        if eta.tzinfo is None:
            eta = eta.replace(tzinfo=timezone.utc)
        try:
            due = eta.timestamp()
        except (OverflowError, ValueError) as exc:  # a tzinfo that moves it past year 9999
            raise RecordValueError("eta", f"{eta!r} is not a time a record can wait for") from exc
        return due if due > time.time() else None
    return None


#: The latest due time a countdown may reach: the end of year 9999 UTC, as for ``eta``.
MAX_DUE_EPOCH_S = datetime(9999, 12, 31, 23, 59, 59, tzinfo=timezone.utc).timestamp()
