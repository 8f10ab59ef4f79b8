"""``track``: the Celery task users call; thin, the work lives in record/publisher.

``track.delay(service_key, usage, ...)`` validates the record in the caller's
process, gives it its identity and publishes it in one round trip; the
returned ``AsyncResult.id`` is the record's ``response_id``.
"""

from __future__ import annotations

import math
import numbers
import time
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

from celery import Task
from celery.result import AsyncResult

from aicm_tasks.errors import RecordTypeError, RecordValueError
from aicm_tasks.publisher import Publisher
from aicm_tasks.record import Record, build_record, legacy_service_key
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
RECORD_FIELDS = ("response_id", "timestamp", "customer_key", "context", "api_key_alias")


class TrackTask(Task):
    """The ``aicm_tasks.track`` task: publish one usage record."""

    name = "aicm_tasks.track"
    ignore_result = True
    typing = False
    _publisher: Publisher | None = None

    @property
    def settings(self) -> Settings:
        return self.app.aicm_settings

    @property
    def publisher(self) -> Publisher:
        if self._publisher is None:
            self._publisher = Publisher(self.settings)
        return self._publisher

    def run(self, *args: Any, **kwargs: Any) -> str:
        """Runs only if an ordinary Celery message for this task reaches a worker
        (sent with ``send_task`` from elsewhere): hand the record to the queue."""
        return str(self.apply_async(args, kwargs).id)

    def delay(self, *args: Any, **kwargs: Any) -> AsyncResult:
        """Publish one record: ``delay(service_key, usage, *, response_id=None,
        timestamp=None, customer_key=None, context=None, api_key_alias=None)``,
        or the older
        ``delay(api_id, service_id, usage, ...)``."""
        return self.apply_async(args, kwargs)

    def apply_async(
        self,
        args: Iterable[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        task_id: str | None = None,
        countdown: float | Decimal | None = None,
        eta: datetime | None = None,
        **options: Any,
    ) -> AsyncResult:
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
        record = self.build(tuple(args or ()), fields)
        self.publisher.publish(record, due_epoch_s=_due_epoch_s(countdown, eta))
        return self.AsyncResult(record.response_id)

    def many(self, records: Iterable[Mapping[str, Any]]) -> list[str]:
        """Publish many records in one broker round trip; returns their response_ids.

        Each mapping holds the keyword fields of :meth:`delay`: ``service_key``,
        ``usage``, and optionally ``response_id``, ``timestamp``,
        ``customer_key``, ``context``, ``api_key_alias``. Every record is validated before any is
        published: one bad record raises (its index in the message) and none
        is published.
        """
        built = self.build_many(records)
        self.publisher.publish_many(built)
        return [record.response_id for record in built]

    def build_many(self, records: Iterable[Mapping[str, Any]]) -> list[Record]:
        """Validate many records as :meth:`many` does (nothing is published)."""
        built: list[Record] = []
        max_bytes = self.settings.max_record_bytes
        for index, fields in enumerate(records):
            if not isinstance(fields, Mapping):
                raise RecordTypeError(
                    f"records[{index}]", f"must be a mapping, not {type(fields).__name__}"
                )
            try:
                built.append(self.build((), dict(fields), max_bytes=max_bytes))
            except (RecordTypeError, RecordValueError) as exc:
                raise type(exc)(
                    f"records[{index}].{exc.field}", str(exc).split(": ", 1)[-1]
                ) from None
        return built

    def build(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], *, max_bytes: int | None = None
    ) -> Record:
        """Validate call arguments into a :class:`Record` (nothing is published).

        ``max_bytes`` defaults to ``AICM_MAX_RECORD_BYTES``."""
        unknown = set(kwargs) - {*RECORD_FIELDS, "service_key", "usage"}
        if unknown:
            raise RecordTypeError(
                sorted(unknown)[0],
                "is not a field of a record "
                "(service_key, usage, response_id, timestamp, customer_key, context, "
                "api_key_alias)",
            )
        if len(args) == 3:  # the older (api_id, service_id, usage) shape
            service_key, usage = legacy_service_key(args[0], args[1]), args[2]
        elif len(args) == 2:
            service_key, usage = args
        elif len(args) == 1:
            service_key, usage = args[0], kwargs.pop("usage", None)
        elif not args:
            service_key, usage = kwargs.pop("service_key", None), kwargs.pop("usage", None)
        else:
            raise RecordTypeError(
                "args",
                f"takes (service_key, usage) or (api_id, service_id, usage), got {len(args)} values",
            )
        if "service_key" in kwargs or "usage" in kwargs:
            raise RecordTypeError("service_key", "given both positionally and by name")
        if max_bytes is None:
            max_bytes = self.settings.max_record_bytes
        return build_record(service_key, usage, max_bytes=max_bytes, **kwargs)


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
