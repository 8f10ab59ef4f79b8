"""``CeleryDelivery``: the official SDK's ``Tracker`` publishing through ``track``.

``Tracker(delivery=CeleryDelivery())`` is the one-line switch for code written
against the ``aicostmanager`` SDK: the tracker, every SDK wrapper given that
tracker, ``track_llm_usage``, ``track_llm_stream_usage`` and their async forms
hand each record to ``track`` (one broker round trip) instead of the SDK's SQLite
queue or an HTTP call. The record keeps everything the SDK built: its
``response_id`` (the LLM response id when a wrapper uses one), timestamp,
customer key and context. Needs the extra ``aicm-tasks[sdk]``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from types import TracebackType
from typing import Any

try:
    from aicostmanager.delivery import Delivery
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "CeleryDelivery needs the official SDK: pip install 'aicm-tasks[sdk]'"
    ) from exc

from aicm_tasks.broker.errors import BROKER_ERRORS
from aicm_tasks.contract import SDK_FIELDS
from aicm_tasks.errors import (
    RecordError,
    RecordTypeError,
    UsageLimitError,
    usage_limit_exceeded_class,
)
from aicm_tasks.producer.anonymize import Anonymization, Anonymizer
from aicm_tasks.producer.api import HasProducer, default_task
from aicm_tasks.producer.record import check_api_key_alias

logger = logging.getLogger(__name__)


def sdk_record_fields(payload: Any) -> dict[str, Any]:
    """The keyword fields of ``track`` for one record dict built by the SDK.

    Raises :class:`RecordTypeError` for something that is not such a record.
    """
    if not isinstance(payload, dict):
        raise RecordTypeError("record", f"must be a dict, not {type(payload).__name__}")
    unknown = set(payload) - set(SDK_FIELDS)
    if unknown:
        raise RecordTypeError(sorted(unknown)[0], "is not a field of a /track record")
    return {SDK_FIELDS[name]: value for name, value in payload.items()}


# The SDK ships no types (pyproject.toml, [tool.mypy]): its Delivery is Any to mypy.
class CeleryDelivery(Delivery):  # type: ignore[misc]
    """An ``aicostmanager.delivery.Delivery`` that publishes with ``track``.

    ``task`` is the tracking task (default: ``aicm_tasks.track``, configured by
    ``AICM_BROKER_URL``); ``api_key_alias`` tags every record with the workers'
    key to deliver it with (``AICM_API_KEYS``; the SDK's own key is not used). It holds no API key, no HTTP client and no thread:
    producers need none. ``enqueue`` returns when the record is in the broker (or in
    the local spool while the broker does not answer), with
    ``{"queued": 1, "response_id": ..., "result": {"response_id": ..., "status":
    "queued"}}``; ``"queued"`` here means handed to the broker, not yet accepted
    by ``/track``. Invalid records raise ``RecordError`` at the call site.

    ``close()`` (also ``stop()``, which ``Tracker.close()`` calls, and the end of
    a ``with`` block) pushes this process's spooled records to the broker if any
    wait there, and logs how many stay spooled when it cannot. Nothing else is
    buffered, so the delivery stays usable after ``close()``: a delivery shared
    by several trackers or wrappers is not broken by one of them closing.
    ``anonymize_fields`` / ``anonymizer`` add to ``AICM_ANONYMIZE_FIELDS`` for
    every record this delivery publishes (the SDK's own ``Tracker`` options
    work too: the tracker applies them before ``enqueue``).
    With ``AICM_LIMITS_ENABLED``, ``enqueue`` raises ``UsageLimitExceeded`` (a
    subclass of the SDK's) after publishing a record that matches a triggered
    limit, as the SDK's deliveries do; the limits are those the workers read
    from ``/track`` and keep in the broker (``docs/limits.md``).
    """

    def __init__(
        self,
        task: HasProducer | None = None,
        *,
        api_key_alias: str | None = None,
        anonymize_fields: Iterable[str] | None = None,
        anonymizer: Anonymizer | None = None,
    ) -> None:
        # Delivery.__init__ is not called on purpose: it reads the API key and
        # opens an HTTP client, neither of which a producer should hold. These
        # are the attributes the SDK's Tracker and Delivery.deliver() use.
        self._task = task
        self.api_key_alias = None if api_key_alias is None else check_api_key_alias(api_key_alias)
        # Checked now, so a bad name fails where the delivery is made.
        self._anonymization = Anonymization().widened(anonymize_fields, anonymizer)
        self.logger = logger
        self._body_key = "tracked"

    @property
    def task(self) -> HasProducer:
        """The tracking task records are published with."""
        if self._task is None:
            self._task = default_task()
        return self._task

    # ``Tracker.__init__`` writes ``delivery.type`` to the user's AICM.INI when the
    # delivery has one, which would make a later plain ``Tracker()`` choose it;
    # ``track_batch`` takes the per-record ``enqueue`` path when there is none.
    # So this class has no ``type`` attribute.

    def enqueue(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Publish one record the SDK built (``service_key``, ``response_id``,
        ``timestamp``, ``payload``, optional ``customer_key`` and ``context``)."""
        return self._enqueue(payload)

    def _enqueue(self, payload: dict[str, Any]) -> dict[str, Any]:
        producer = self.task.producer
        fields = sdk_record_fields(payload)
        if self.api_key_alias is not None:
            fields["api_key_alias"] = self.api_key_alias
        anonymization = producer.anonymization.widened(
            self._anonymization.fields or None, self._anonymization.anonymizer
        )
        record = producer.build((), fields, anonymization=anonymization)
        producer.publish(record)
        response_id = record.response_id
        return {
            "queued": 1,
            "response_id": response_id,
            "result": {"response_id": response_id, "status": "queued"},
        }

    def deliver(self, body: dict[str, Any]) -> None:
        """Publish every record of a request body (``{"tracked": [...]}``).

        The SDK's ``deliver`` stops at the first record a triggered limit stops,
        and the records after it are never published: money spent, not billed.
        Here every record is published, then ``UsageLimitExceeded`` names every
        limit they matched. (``Tracker.track_batch`` calls ``enqueue`` record by
        record and still stops at the first: use ``track_many`` for batches.)
        A record that is refused (``RecordError``) does not stop the others
        either, as ``/track`` takes a body's good records: they are published,
        then the first refusal is raised, naming its index (``tracked[1].service_key``).
        """
        matched: list[Any] = []
        refused: RecordError | None = None
        for index, payload in enumerate(body.get(self._body_key, [])):
            try:
                self.enqueue(payload)
            except UsageLimitError as exc:
                matched.extend(x for x in exc.triggered_limits if x not in matched)
            except RecordError as exc:
                if refused is None:
                    problem = str(exc).split(": ", 1)[-1]
                    refused = type(exc)(
                        f"{self._body_key}[{index}].{exc.field}",
                        f"{problem} (the body's other records were published)",
                    )
        if refused is not None:
            raise refused
        if matched:
            raise usage_limit_exceeded_class()(matched)

    def close(self) -> None:
        """Push this process's spooled records to the broker, if any wait there."""
        publisher = self.task.producer.publisher
        spool = publisher.spool
        if spool is None or not spool.has_records():
            return
        try:
            spool.drain(publisher.drain_target)
        except BROKER_ERRORS as exc:
            logger.warning(
                "%d records stay spooled in %s: the broker does not answer (%s); the "
                "next process that publishes, or `aicm-tasks spool drain`, pushes them",
                spool.status().records,
                spool.directory,
                exc,
            )

    def stop(self) -> None:
        """What ``Tracker.close()`` calls: the same as :meth:`close`."""
        self.close()

    def __enter__(self) -> CeleryDelivery:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
