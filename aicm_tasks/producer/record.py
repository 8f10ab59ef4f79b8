"""The usage record, validated and given its identity in the caller's process.

Validation is hand-written rather than a pydantic model: it runs on the web
request's path, where every microsecond counts. The rules are the contract's
own (:func:`aicm_tasks.contract.record_problems`, which the local server runs
too), so a record ``track.delay`` accepts is one the server accepts, and a
record it would refuse never leaves the caller's process (the checks cost about
4 µs a record: ``build_record`` of a typical record went from 6.5 to 10.7 µs);
then come JSON-serialisability and a size limit. The official SDK's ``{}``
placeholders for unset token counts are accepted and dropped from the payload
(``contract.without_placeholders``, ~0.3 µs); with the faster checks of issue
14 (nesting walk, remembered service keys) a typical record still went from
9.1 to 8.4 µs of CPU (an OpenAI usage with details: 15.2 to 14.0 µs; best of
7 timeit runs of 100,000 calls, two runs each, on the 2-vCPU VM). A record that passes is serialised
exactly once; those bytes are what the broker carries and what the worker
sends to ``/track``, untouched.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, cast

from aicm_tasks.broker.messages import encode
from aicm_tasks.contract import (
    API_KEY_ALIAS_PATTERN,
    MAX_KEY_LENGTH,
    MAX_RESPONSE_ID_LENGTH,
    Problem,
    format_timestamp,
    key_problem,
    record_problems,
    timestamp_problem,
    without_placeholders,
)
from aicm_tasks.errors import RecordError, RecordTypeError, RecordValueError

__all__ = [
    "API_KEY_ALIAS_PATTERN",
    "MAX_KEY_LENGTH",
    "MAX_RESPONSE_ID_LENGTH",
    "Record",
    "build_record",
    "check_api_key_alias",
    "legacy_service_key",
    "new_response_id",
    "normalize_timestamp",
]

#: A record whose own ``timestamp`` is further than this from the clock at the
#: call site (a backfill, an import) carries its enqueue time in a metadata line
#: (``{"enqueued_at": ...}``), so status ages it from when it was queued, not
#: from when its usage happened. In seconds.
ENQUEUED_AT_AFTER_S = 5.0

_dumps = json.JSONEncoder(
    ensure_ascii=False, allow_nan=False, separators=(",", ":"), check_circular=True
).encode


@dataclass(frozen=True, slots=True)
class Record:
    """A validated usage record, ready for the broker.

    ``data`` is the record as the contract's JSON object; ``body`` its UTF-8 JSON
    bytes, produced once at the call site. ``message`` is what the broker
    carries: the body itself, or the body behind a line of delivery metadata
    naming its API-key alias (the alias never reaches ``/track``; the key
    itself never leaves the worker) and, for a record whose ``timestamp`` is
    not about now (a backfill), ``enqueued_at``: when it was built, epoch
    seconds on this host's clock.
    """

    response_id: str
    service_key: str
    data: dict[str, Any]
    body: bytes
    api_key_alias: str | None = None
    enqueued_at: float | None = None

    @property
    def message(self) -> bytes:
        """The broker message for this record."""
        if self.api_key_alias is None and self.enqueued_at is None:
            return self.body
        meta: dict[str, Any] = {}
        if self.api_key_alias is not None:
            meta["api_key_alias"] = self.api_key_alias
        if self.enqueued_at is not None:
            meta["enqueued_at"] = self.enqueued_at
        return encode(self.body, meta)


def build_record(
    service_key: Any,
    usage: Any,
    *,
    response_id: Any = None,
    timestamp: Any = None,
    customer_key: Any = None,
    context: Any = None,
    api_key_alias: Any = None,
    max_bytes: int = 32 * 1024,
) -> Record:
    """Validate one record's fields and give it its identity.

    ``response_id`` defaults to a uuid4 hex; ``timestamp`` (epoch seconds, a
    datetime, or an ISO-8601 / numeric string) defaults to now and becomes the
    contract's epoch-seconds string. ``api_key_alias`` names which of the
    workers' API keys (``AICM_API_KEYS``) delivers it; None means the default
    key (``AICM_API_KEY``). A ``{}`` where a token count goes (how the official
    SDK writes an unset count) is left out of the record. Raises :class:`RecordTypeError` or
    :class:`RecordValueError` naming the field; nothing is published then.
    """
    if not isinstance(usage, Mapping):
        raise RecordTypeError(
            "usage", f"must be a JSON object (a dict), not {type(usage).__name__}"
        )
    if context is not None and not isinstance(context, Mapping):
        raise RecordTypeError(
            "context", f"must be a JSON object (a dict) or None, not {type(context).__name__}"
        )
    # Only a record given its own timestamp may be a backfill. Its enqueue time
    # then rides in the message's metadata line: no extra round trip (the same
    # LPUSH), about 2 µs to serialise the line, and only for records whose
    # timestamp is over ENQUEUED_AT_AFTER_S from now; a record stamped now costs
    # nothing more. It is this host's clock: a producer whose clock is off by
    # X s makes its backfills look X s younger or older in status (never below
    # 0 s), as its own timestamps already do for every other record.
    enqueued_at = None
    if timestamp is None:
        stamp = format_timestamp(time.time())
    else:
        seconds = timestamp_seconds(timestamp)
        stamp = format_timestamp(seconds)
        now = time.time()
        if abs(now - seconds) > ENQUEUED_AT_AFTER_S:
            enqueued_at = round(now, 3)
    data: dict[str, Any] = {
        "service_key": service_key,
        "response_id": new_response_id() if response_id is None else response_id,
        "timestamp": stamp,
        # The SDK's {} placeholders for unset counts are dropped: absent either
        # way, and never worth their bytes in the broker.
        "payload": without_placeholders(usage if type(usage) is dict else dict(usage)),
    }
    if customer_key is not None:
        data["customer_key"] = customer_key
    if context is not None:
        data["context"] = context if type(context) is dict else dict(context)
    # The contract's rules, the same the server applies; checked before
    # serialising so a structure nested past the limit (or containing itself)
    # is refused with a message rather than a RecursionError from the encoder.
    problems = record_problems(data, payload_field="usage")
    if problems:
        raise _record_error(problems[0])
    response_id = data["response_id"]
    body = _serialize(data)
    if len(body) > max_bytes:
        raise RecordValueError(
            "record",
            f"is {len(body)} bytes serialised, over the limit of {max_bytes} "
            f"(AICM_MAX_RECORD_BYTES); response_id={response_id}",
        )
    if api_key_alias is not None:
        api_key_alias = check_api_key_alias(api_key_alias)
    return Record(response_id, data["service_key"], data, body, api_key_alias, enqueued_at)


def check_api_key_alias(alias: Any) -> str:
    """Return ``alias`` if it is a valid API-key alias name; raise otherwise."""
    if not isinstance(alias, str):
        raise RecordTypeError("api_key_alias", f"must be a string, not {type(alias).__name__}")
    if not API_KEY_ALIAS_PATTERN.fullmatch(alias):
        raise RecordValueError(
            "api_key_alias",
            f"{alias!r} is not an alias name: 1-64 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit (the alias names a key in AICM_API_KEYS; "
            "never pass the key itself)",
        )
    return alias


def new_response_id() -> str:
    """A random (version 4) UUID as 32 hex digits, as ``uuid.uuid4().hex`` gives.

    Written out because ``uuid.uuid4().hex`` builds a UUID object (and an int)
    only to print it: 2.6 µs against 1 µs here, on every ``track.delay``.
    """
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40  # version 4
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
    return raw.hex()


def legacy_service_key(api_id: Any, service_id: Any) -> str:
    """Join the older ``(api_id, service_id)`` pair into ``api_id::service_id``."""
    api = _check_key("api_id", api_id)
    service = _check_key("service_id", service_id)
    return f"{api}::{service}"


def normalize_timestamp(value: Any) -> str:
    """Return the contract's timestamp: seconds since the epoch as a plain decimal string.

    Accepts None (now), int/float epoch seconds, a datetime (naive ones are taken
    as UTC), an ISO-8601 string or a numeric string. The time must fall within
    the contract's range (2000-01-01 to 2100-01-01, ``contract.MIN_TIMESTAMP_S``
    and ``MAX_TIMESTAMP_S``); a millisecond epoch is refused with a hint to
    divide by 1000.
    """
    if value is None:
        return format_timestamp(time.time())
    return format_timestamp(timestamp_seconds(value))


def timestamp_seconds(value: Any) -> float:
    """The epoch seconds of a record's ``timestamp`` (see :func:`normalize_timestamp`),
    checked against the contract's range; raises :class:`RecordError` otherwise."""
    if isinstance(value, bool):
        raise RecordTypeError("timestamp", "must be a datetime, a number or a string, not bool")
    if isinstance(value, int | float):
        try:
            seconds = float(value)
        except OverflowError:  # an int past float's range
            raise RecordValueError(
                "timestamp", "is after 2100-01-01; give seconds since the epoch"
            ) from None
    elif isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        seconds = value.timestamp()
    elif isinstance(value, str):
        seconds = _parse_timestamp_string(value)
    else:
        raise RecordTypeError(
            "timestamp",
            f"must be a datetime, epoch seconds or an ISO-8601 string, not {type(value).__name__}",
        )
    problem = timestamp_problem(seconds)
    if problem is not None:
        raise RecordValueError("timestamp", problem)
    return seconds


def _parse_timestamp_string(text: str) -> float:
    stripped = text.strip()
    try:
        return float(stripped)
    except ValueError:
        pass
    iso = stripped[:-1] + "+00:00" if stripped.endswith(("Z", "z")) else stripped
    try:
        parsed = datetime.fromisoformat(iso)
    except ValueError:
        raise RecordValueError(
            "timestamp", f"{text!r} is neither epoch seconds nor an ISO-8601 date-time"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.timestamp()


def _check_key(field: str, value: Any) -> str:
    problem = key_problem(field, value, required=True)
    if problem is not None:
        raise _record_error(problem)
    # A required key with no problem is a non-blank str (contract.key_problem).
    return cast(str, value)


def _record_error(problem: Problem) -> RecordError:
    """The call site's exception for a contract problem: a type or a value error."""
    if problem.kind == "type":
        return RecordTypeError(problem.field, problem.message)
    return RecordValueError(problem.field, problem.message)


def _serialize(data: dict[str, Any]) -> bytes:
    try:
        return _dumps(data).encode("utf-8")
    except (TypeError, ValueError) as exc:
        # Find the field at fault so the message can name it.
        for field in ("payload", "context"):
            if field in data:
                try:
                    _dumps(data[field])
                except (TypeError, ValueError) as field_exc:
                    name = "usage" if field == "payload" else field
                    raise RecordValueError(
                        name, f"cannot be carried as JSON: {field_exc}"
                    ) from None
        raise RecordValueError("record", f"cannot be carried as JSON: {exc}") from None
