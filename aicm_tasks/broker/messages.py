"""The broker message format, and the dead-letter entry format.

A message is the record's JSON exactly as the producer serialised it. After a
failed attempt the worker puts a line of delivery metadata in front of it::

    {"attempts":3,"retries":2,"first_failure_at":...,"last_failure_at":...}\\n{record}

A producer that tags a record with an API-key alias writes that line itself:
``{"api_key_alias":"team-a"}\\n{record}``; so does one whose record carries a
``timestamp`` far from now (a backfill): ``{"enqueued_at":1764570000.123}\\n{record}``,
so that status ages it from when it was queued (a replay writes it too).

JSON never contains a raw newline, so the split is unambiguous, and the record
bytes stay untouched from the producer to ``/track``: the worker joins them into
the request body without re-serialising them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

META_SEPARATOR = b"\n"


@dataclass(slots=True)
class Item:
    """One message taken from the broker, decoded just enough to deliver it."""

    raw: bytes
    body: bytes
    response_id: str
    service_key: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    #: Why the message cannot be delivered at all, or None when it can.
    malformed: str | None = None

    @property
    def attempts(self) -> int:
        """POSTs this record has been part of before this one."""
        return _count(self.meta.get("attempts")) if self.meta else 0

    @property
    def retries(self) -> int:
        """Retries scheduled since it was published or last replayed."""
        return _count(self.meta.get("retries")) if self.meta else 0

    @property
    def api_key_alias(self) -> str | None:
        """Which of the worker's API keys delivers it; None for the default key."""
        alias = self.meta.get("api_key_alias") if self.meta else None
        # Anything but a string names no configured alias: never the default key.
        return None if alias is None else str(alias)


def _count(value: Any) -> int:
    """A count from delivery metadata; anything that is not one reads as 0 (the
    next attempt writes a valid count back), never an exception that would
    hold the record's batch-mates."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return 0


#: How every record written by :func:`aicm_tasks.producer.record.build_record` begins.
_FAST_PREFIX = b'{"service_key":"'
_FAST_MIDDLE = b'","response_id":"'


def decode(raw: bytes) -> Item:
    """Split metadata from the record and read the record's identity.

    Never raises: a message that cannot be read is an Item marked ``malformed``
    (dead-lettered with that reason), so it cannot hold its batch-mates.
    """
    if raw.startswith(_FAST_PREFIX):
        fast = _decode_fast(raw, raw)
        if fast is not None:
            return fast
    return _decode_slow(raw)


def _decode_fast(raw: bytes, body: bytes) -> Item | None:
    """Read service_key and response_id by position from a record our producer
    wrote (compact JSON, these two keys first), without parsing the whole record.

    The worker's hottest loop decodes every record; a full ``json.loads`` was a
    third of its CPU. Anything unusual (an escape in either value, another key
    order) falls back to the full parse. A record whose rest is not valid JSON
    is refused by the server as a whole request and isolated as ``rejected``.
    """
    start = len(_FAST_PREFIX)
    end = body.find(b'"', start)
    if end == -1 or body[end : end + len(_FAST_MIDDLE)] != _FAST_MIDDLE:
        return None
    service_key = body[start:end]
    id_start = end + len(_FAST_MIDDLE)
    id_end = body.find(b'"', id_start)
    if id_end <= id_start:
        return None
    response_id = body[id_start:id_end]
    # find(), not ``in``: bytes.__contains__ first tries the operand as an int
    # and builds (then drops) a TypeError, several times the cost of the search.
    if service_key.find(b"\\") != -1 or response_id.find(b"\\") != -1:
        return None
    if not body.endswith(b"}"):
        return None
    try:
        return Item(raw, body, response_id.decode(), service_key.decode())
    except UnicodeDecodeError:
        return None


def _decode_slow(raw: bytes) -> Item:
    meta: dict[str, Any] = {}
    body = raw
    cut = raw.find(META_SEPARATOR)
    if cut != -1:
        body = raw[cut + 1 :]
        try:
            parsed_meta = json.loads(raw[:cut])
        except (ValueError, RecursionError):
            parsed_meta = None
        if not isinstance(parsed_meta, dict):
            return Item(raw, body, malformed_id(raw), malformed="unreadable delivery metadata")
        meta = parsed_meta
        if body.startswith(_FAST_PREFIX):
            fast = _decode_fast(raw, body)
            if fast is not None:
                fast.meta = meta
                return fast
    try:
        record = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return Item(raw, body, malformed_id(raw), meta=meta, malformed="not JSON")
    except RecursionError:
        # Deeper than this interpreter's parser goes (the limit differs between
        # Python versions; the producer bounds depth far below it, see
        # aicm_tasks.producer.record): such a record can never be read here.
        return Item(raw, body, malformed_id(raw), meta=meta, malformed="nested too deeply")
    if not isinstance(record, dict):
        return Item(raw, body, malformed_id(raw), meta=meta, malformed="not a JSON object")
    response_id, service_key = record.get("response_id"), record.get("service_key")
    if not isinstance(response_id, str) or not response_id:
        return Item(raw, body, malformed_id(raw), meta=meta, malformed="no response_id")
    if not isinstance(service_key, str):
        return Item(raw, body, response_id, meta=meta, malformed="no service_key")
    return Item(raw, body, response_id, service_key, meta)


def encode(body: bytes, meta: dict[str, Any] | None = None) -> bytes:
    """Build a message from record bytes and optional delivery metadata."""
    if not meta:
        return body
    return json.dumps(meta, separators=(",", ":")).encode() + META_SEPARATOR + body


def malformed_id(raw: bytes) -> str:
    """A stable id for a message that carries no usable response_id."""
    return "malformed-" + hashlib.sha256(raw).hexdigest()[:24]


def batch_body(bodies: list[bytes]) -> bytes:
    """The ``POST /track`` body for records already serialised as JSON."""
    return b'{"tracked":[' + b",".join(bodies) + b"]}"


def record_of(item: Item) -> dict[str, Any] | None:
    """The record as a dict, or None when the message is not one."""
    try:
        record = json.loads(item.body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    return record if isinstance(record, dict) else None
