"""Per-record validation of a ``POST /track`` record, as the contract defines it.

Pure and hand-written (no pydantic model): it runs once per record on the
server's hot path, and the error strings must be the contract's own
(``"payload: input_tokens must be an integer"``), which are ``field: problem``.
"""

from __future__ import annotations

import re
from typing import Any

#: Payload fields that count tokens; when present they must be non-negative integers.
TOKEN_FIELDS = (
    "input_tokens",
    "output_tokens",
    "cached_input_tokens",
    "reasoning_tokens",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
)

#: Seconds since the epoch as the contract writes them: digits, optionally a fraction.
_TIMESTAMP_RE = re.compile(r"\d+(?:\.\d+)?")


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def validate_record(obj: Any) -> list[str]:
    """Return the reasons ``obj`` is not a valid contract record; empty if it is.

    Each reason is ``"<field>: <problem>"``. Fields beyond the contract's are
    ignored. Token counts (:data:`TOKEN_FIELDS`) must be non-negative integers
    when present; null counts as absent.
    """
    if not isinstance(obj, dict):
        return [f"record: must be a JSON object, not {_type_name(obj)}"]
    errors: list[str] = []

    service_key = obj.get("service_key")
    if not isinstance(service_key, str):
        errors.append(f"service_key: must be a string, not {_type_name(service_key)}")
    else:
        vendor, sep, service = service_key.partition("::")
        if not sep or not vendor.strip() or not service.strip():
            errors.append(f"service_key: {service_key!r} is not of the form 'vendor::service'")

    response_id = obj.get("response_id")
    if not isinstance(response_id, str):
        errors.append(f"response_id: must be a string, not {_type_name(response_id)}")
    elif not response_id.strip():
        errors.append("response_id: must not be empty")

    timestamp = obj.get("timestamp")
    if not isinstance(timestamp, str):
        errors.append(f"timestamp: must be a string of epoch seconds, not {_type_name(timestamp)}")
    elif _TIMESTAMP_RE.fullmatch(timestamp) is None:
        errors.append(
            f"timestamp: {timestamp[:40]!r} is not a decimal number of seconds since the epoch"
        )

    payload = obj.get("payload")
    if not isinstance(payload, dict):
        errors.append(f"payload: must be a JSON object, not {_type_name(payload)}")
    else:
        for name in TOKEN_FIELDS:
            value = payload.get(name)
            # null is taken as absent: SDK usage objects serialise unset counts as null.
            if value is None:
                continue
            # bool is an int subclass in Python but not a count.
            if type(value) is not int:
                errors.append(f"payload: {name} must be an integer")
            elif value < 0:
                errors.append(f"payload: {name} must not be negative")

    customer_key = obj.get("customer_key")
    if customer_key is not None and not isinstance(customer_key, str):
        errors.append(f"customer_key: must be a string or null, not {_type_name(customer_key)}")

    context = obj.get("context")
    if context is not None and not isinstance(context, dict):
        errors.append(f"context: must be a JSON object or null, not {_type_name(context)}")

    return errors
