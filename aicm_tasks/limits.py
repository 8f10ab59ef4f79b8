"""Triggered usage limits in the official SDK's format, and which records they stop.

The format once, for every side (the worker reads it, producers match against
it, a server may emit it). A ``/track`` answer, and ``GET /triggered-limits``,
carry::

    "triggered_limits": {"encrypted_payload": "<JWT>", "public_key": "<PEM>"}

The JWT is signed RS256 with issuer ``aicm-api``; its claims hold
``"triggered_limits": [{event_id, limit_id, threshold_type, amount, period,
limit_context, limit_message, service_key, customer_key, api_key_id,
triggered_at, expires_at}, ...]``, the whole current set for the API key that
asked (an empty list clears it). The SDK 0.3.2 reads it in
``aicostmanager/config_manager.py``; ``public_key`` may be left out of later
answers, and the last one received is used.

Pure Python, importing nothing of aicm-tasks: any runtime may import it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone
from typing import Any

#: The ``iss`` claim every triggered-limits token carries (as the SDK checks).
ISSUER = "aicm-api"
#: The only signature algorithm accepted (as the SDK): never ``none``, never HS256
#: (which would let a public key be used as a shared secret).
ALGORITHM = "RS256"
#: Key of the token in a ``triggered_limits`` object.
TOKEN_FIELD = "encrypted_payload"
#: Key of the PEM public key in a ``triggered_limits`` object.
PUBLIC_KEY_FIELD = "public_key"
#: Key of the list of limit events in the token's claims.
CLAIM = "triggered_limits"


@dataclass(frozen=True, slots=True)
class TriggeredLimit:
    """One triggered limit: the attributes of the SDK's ``TriggeredLimit``.

    ``expires_epoch_s`` is ``expires_at`` read as epoch seconds (None: never
    expires, or not a time this could read).
    """

    event_id: str | None = None
    limit_id: str | None = None
    threshold_type: str | None = None
    amount: float = 0.0
    period: str | None = None
    limit_context: str | None = None
    limit_message: str | None = None
    service_key: str | None = None
    customer_key: str | None = None
    api_key_id: str | None = None
    triggered_at: str | None = None
    expires_at: str | None = None

    @property
    def expires_epoch_s(self) -> float | None:
        return _epoch_s(self.expires_at)

    def to_dict(self) -> dict[str, Any]:
        """The event as the token carries it."""
        return asdict(self)


_FIELD_NAMES = tuple(f.name for f in fields(TriggeredLimit))


def limit_from_event(event: Mapping[str, Any]) -> TriggeredLimit:
    """A :class:`TriggeredLimit` from one event of the token (unknown keys ignored,
    values that are not strings read as the SDK would: ``str`` or None).

    Raises ``ValueError`` for an ``amount`` that is not a number."""
    values: dict[str, Any] = {}
    for name in _FIELD_NAMES:
        value = event.get(name)
        if name == "amount":
            try:
                amount = float(value or 0)
            except OverflowError:  # an integer past a float: one ValueError for callers
                raise ValueError("a limit's amount is past what a float holds") from None
            values[name] = amount if math.isfinite(amount) else 0.0
        else:
            values[name] = None if value is None else str(value)
    return TriggeredLimit(**values)


def limits_from_claims(claims: Mapping[str, Any]) -> tuple[TriggeredLimit, ...]:
    """The limits of a verified token's claims; ``ValueError`` when they are not a list of objects."""
    events = claims.get(CLAIM, [])
    if not isinstance(events, list) or not all(isinstance(e, Mapping) for e in events):
        raise ValueError("the token's triggered_limits claim is not a list of objects")
    return tuple(limit_from_event(event) for event in events)


def matches(limit: TriggeredLimit, service_key: str | None, customer_key: str | None) -> bool:
    """Whether ``limit`` stops a record of ``service_key`` and ``customer_key``.

    The SDK's rule (``ConfigManager.get_triggered_limits``): a key given (not
    empty) must equal the limit's; a key not given matches any. So a limit
    with no ``service_key`` does not stop a record that names one.
    """
    if service_key and limit.service_key != service_key:
        return False
    return not (customer_key and limit.customer_key != customer_key)


def matching(
    limits: Iterable[TriggeredLimit],
    service_key: str | None,
    customer_key: str | None,
    *,
    now_epoch_s: float,
) -> list[TriggeredLimit]:
    """The limits that stop such a record, leaving out those expired at ``now_epoch_s``
    (the SDK keeps expired ones until the server's next set; a worker cut off from
    the server would otherwise enforce them for good)."""
    found = []
    for limit in limits:
        if not matches(limit, service_key, customer_key):
            continue
        expires = limit.expires_epoch_s
        if expires is not None and expires <= now_epoch_s:
            continue
        found.append(limit)
    return found


def encode_limits(limits: Iterable[TriggeredLimit]) -> str:
    """Canonical JSON of a set of limits (equal sets give equal strings)."""
    events = sorted(
        (limit.to_dict() for limit in limits), key=lambda e: json.dumps(e, sort_keys=True)
    )
    return json.dumps(events, sort_keys=True, separators=(",", ":"))


def decode_limits(text: str | bytes) -> tuple[TriggeredLimit, ...]:
    """The limits :func:`encode_limits` wrote; ``ValueError`` for anything else."""
    events = json.loads(text)
    if not isinstance(events, list):
        raise ValueError("not a list of limits")
    return tuple(limit_from_event(event) for event in events if isinstance(event, Mapping))


def _epoch_s(when: str | None) -> float | None:
    if not when:
        return None
    try:
        parsed = datetime.fromisoformat(when.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.timestamp()
