"""The producer's one entry point: build records, publish them.

``track.delay`` (``tasks.py``), ``track_async`` (``aio.py``), ``CeleryDelivery``
(``sdk.py``) and ``track_llm_usage`` (``llm.py``) all go through a
:class:`Producer`: one per tracking task, so they share its publisher (one
Redis connection pool) and its spool directory. Nothing here knows Celery.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

import redis

from aicm_tasks.broker.limits import LimitStore
from aicm_tasks.broker.records import BrokerClient
from aicm_tasks.broker.topology import cluster_client, layout_of, record_urls
from aicm_tasks.errors import RecordTypeError, RecordValueError
from aicm_tasks.producer.anonymize import Anonymization, Anonymizer
from aicm_tasks.producer.limit_guard import LimitGuard, LimitReader, NoLimitStore
from aicm_tasks.producer.publisher import Publisher
from aicm_tasks.producer.record import Record, build_record, legacy_service_key
from aicm_tasks.settings import Settings

#: The keyword fields of a record besides ``service_key`` and ``usage``.
RECORD_FIELDS = ("response_id", "timestamp", "customer_key", "context", "api_key_alias")
_NO_ANONYMIZATION = Anonymization()


def build(
    args: tuple[Any, ...],
    fields: dict[str, Any],
    *,
    max_bytes: int,
    anonymization: Anonymization = _NO_ANONYMIZATION,
) -> Record:
    """Validate call arguments into a :class:`Record` (nothing is published).

    ``args`` is ``(service_key, usage)``, ``(service_key,)`` with ``usage`` in
    ``fields``, the older ``(api_id, service_id, usage)``, or empty with both in
    ``fields``. ``fields`` is consumed (``service_key`` and ``usage`` are popped).
    ``max_bytes`` is the largest serialised record (``AICM_MAX_RECORD_BYTES``).
    ``anonymization`` names the fields whose values are replaced first; the
    call's ``anonymize_fields`` and ``anonymizer`` options widen it.
    """
    if "anonymize_fields" in fields or "anonymizer" in fields:
        anonymization = anonymization.widened(
            fields.pop("anonymize_fields", None), fields.pop("anonymizer", None)
        )
    unknown = set(fields) - {*RECORD_FIELDS, "service_key", "usage"}
    if unknown:
        raise RecordTypeError(
            sorted(unknown)[0],
            "is not a field of a record "
            "(service_key, usage, response_id, timestamp, customer_key, context, "
            "api_key_alias) nor an option (anonymize_fields, anonymizer)",
        )
    if len(args) == 3:  # the older (api_id, service_id, usage) shape
        service_key, usage = legacy_service_key(args[0], args[1]), args[2]
    elif len(args) == 2:
        service_key, usage = args
    elif len(args) == 1:
        service_key, usage = args[0], fields.pop("usage", None)
    elif not args:
        service_key, usage = fields.pop("service_key", None), fields.pop("usage", None)
    else:
        raise RecordTypeError(
            "args",
            f"takes (service_key, usage) or (api_id, service_id, usage), got {len(args)} values",
        )
    if "service_key" in fields or "usage" in fields:
        raise RecordTypeError("service_key", "given both positionally and by name")
    if anonymization.fields:
        usage, context = anonymization.apply(usage, fields.get("context"))
        if context is not None:
            fields["context"] = context
    return build_record(service_key, usage, max_bytes=max_bytes, **fields)


def build_many(
    records: Iterable[Mapping[str, Any]],
    *,
    max_bytes: int,
    anonymization: Anonymization = _NO_ANONYMIZATION,
) -> list[Record]:
    """Validate many records, each a mapping of :func:`build`'s keyword fields
    (``anonymize_fields`` and ``anonymizer`` per record too).

    Every record is validated before any is returned: one bad record raises,
    its index in the message (``records[3].usage: ...``).
    """
    built: list[Record] = []
    for index, fields in enumerate(records):
        if not isinstance(fields, Mapping):
            raise RecordTypeError(
                f"records[{index}]", f"must be a mapping, not {type(fields).__name__}"
            )
        try:
            built.append(build((), dict(fields), max_bytes=max_bytes, anonymization=anonymization))
        except (RecordTypeError, RecordValueError) as exc:
            raise type(exc)(f"records[{index}].{exc.field}", str(exc).split(": ", 1)[-1]) from None
    return built


class Producer:
    """Build and publish records with one :class:`Settings`.

    The publisher (and its Redis pool and spool) is opened on the first
    publish, not when the producer is made: building one costs nothing.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._publisher: Publisher | None = None
        key = settings.anonymize_key
        #: The process's anonymised fields (``AICM_ANONYMIZE_FIELDS``, keyed by
        #: ``AICM_ANONYMIZE_KEY``); calls and ``CeleryDelivery`` widen it.
        self.anonymization = Anonymization.from_settings(
            settings.anonymize_fields, None if key is None else key.get_secret_value()
        )
        self._limit_store: LimitReader | None = None
        #: Read once: with limits off, a publish pays one attribute test for them.
        self._enforce_limits = settings.limits_enabled
        if settings.records_on_rabbitmq:
            # No limits store on RabbitMQ yet (settings refuse AICM_LIMITS_ENABLED
            # there): check_limits answers from an empty set and opens no Redis.
            self._limit_store = NoLimitStore(
                "records travel through RabbitMQ, which keeps no triggered limits yet "
                "(docs/limits.md)"
            )
            self.limits = LimitGuard(
                self._limits_store, refresh_s=settings.limits_refresh_ms / 1000
            )
            return
        # One limits set for the pipeline, on shard 0 (the workers write it there).
        self._limits_place = layout_of(settings).places[0]
        self.limits = LimitGuard(
            self._limits_store,
            refresh_s=settings.limits_refresh_ms / 1000,
            channel=self._limits_place.keys.limits_changed,
            subscriber_client=self._subscriber_client,
        )

    def _limits_store(self) -> LimitReader:
        # On the publisher's connection pool: its timeouts bound a read as a publish.
        if self._limit_store is None:
            self._limit_store = LimitStore(self.publisher.store.client, self.publisher.store.keys)
        return self._limit_store

    def _subscriber_client(self) -> BrokerClient:
        # Its own connection, without the publisher's socket timeout: it waits
        # for messages indefinitely (keepalive and health checks notice a dead peer).
        # Shard 0's Redis, where the limits live. On a cluster, redis-py's
        # ClusterPubSub subscribes on the node serving the channel's slot (the
        # channel carries shard 0's hash tag); a PUBLISH reaches every node anyway.
        if self.settings.redis_cluster:
            return cluster_client(
                record_urls(self.settings),
                socket_connect_timeout=self.settings.publish_timeout_s,
                socket_keepalive=True,
            )
        return redis.Redis.from_url(
            self._limits_place.url,
            socket_connect_timeout=self.settings.publish_timeout_s,
            socket_keepalive=True,
            health_check_interval=30,
        )

    @property
    def publisher(self) -> Publisher:
        """The publisher records go through (opened on first use)."""
        if self._publisher is None:
            self._publisher = Publisher(self.settings)
        return self._publisher

    def build(
        self,
        args: tuple[Any, ...],
        fields: dict[str, Any],
        *,
        max_bytes: int | None = None,
        anonymization: Anonymization | None = None,
    ) -> Record:
        """:func:`build` with ``max_bytes`` defaulting to ``AICM_MAX_RECORD_BYTES``
        and ``anonymization`` to the process's (``AICM_ANONYMIZE_FIELDS``)."""
        if max_bytes is None:
            max_bytes = self.settings.max_record_bytes
        return build(
            args, fields, max_bytes=max_bytes, anonymization=anonymization or self.anonymization
        )

    def build_many(
        self,
        records: Iterable[Mapping[str, Any]],
        *,
        anonymize_fields: Iterable[str] | None = None,
        anonymizer: Anonymizer | None = None,
    ) -> list[Record]:
        """:func:`build_many` with ``AICM_MAX_RECORD_BYTES`` and the process's
        anonymised fields, widened by ``anonymize_fields`` / ``anonymizer``."""
        return build_many(
            records,
            max_bytes=self.settings.max_record_bytes,
            anonymization=self.anonymization.widened(anonymize_fields, anonymizer),
        )

    def publish(self, record: Record, *, due_epoch_s: float | None = None) -> None:
        """Publish one record (deliverable from ``due_epoch_s``, default now).

        With ``AICM_LIMITS_ENABLED``, then raises ``UsageLimitExceeded`` when the
        record matches a triggered limit (it stays published, as with the SDK)."""
        self.publisher.publish(record, due_epoch_s=due_epoch_s)
        if self._enforce_limits:
            self.limits.enforce((record,))

    def track(self, fields: dict[str, Any]) -> str:
        """Build one record from keyword ``fields`` and publish it; its ``response_id``."""
        record = self.build((), fields)
        self.publish(record)
        return record.response_id

    def publish_many(self, records: Sequence[Record]) -> None:
        """Publish many records in one broker round trip; with limits on, then raise
        ``UsageLimitExceeded`` naming every limit any of them matches (all stay published)."""
        self.publisher.publish_many(records)
        if self._enforce_limits:
            self.limits.enforce(records)


class HasProducer(Protocol):
    """What ``track_async``, ``CeleryDelivery`` and ``track_llm_usage`` take as
    ``task``: a tracking task (``aicm_tasks.track``, or one of another app)."""

    @property
    def producer(self) -> Producer: ...


def default_task() -> HasProducer:
    """The package's ``track`` task: its app is built on first use from ``AICM_*``.

    Looked up at call time, not import time: ``aicm_tasks/__init__.py`` imports
    this package, and a helper given its own ``task`` never builds the default
    app. The one import upwards in the producer (import-linter allows exactly
    this one, see pyproject.toml).
    """
    import aicm_tasks

    track: HasProducer = aicm_tasks.track
    return track
