"""Every limit of the /track contract, at the call site and at the server: the boundary
is accepted, one step past it is refused, with a message naming the field and what to do."""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from typing import Any

import pytest

from aicm_tasks.contract import (
    MAX_KEY_LENGTH,
    MAX_NESTING_DEPTH,
    MAX_RESPONSE_ID_LENGTH,
    MAX_TIMESTAMP_S,
    MAX_TOKEN_COUNT,
    MIN_TIMESTAMP_S,
    TIMESTAMP_PATTERN,
)
from aicm_tasks.errors import RecordError, RecordTypeError, RecordValueError
from aicm_tasks.producer.record import build_record, legacy_service_key, normalize_timestamp
from aicm_tasks.server.validation import validate_record


def nested(depth: int, leaf: Any = 1) -> Any:
    """A JSON object nested ``depth`` levels deep, objects and arrays in turn
    (depth 1 is ``{"k": leaf}``, depth 2 ``{"k": [leaf]}``)."""
    value = leaf
    for level in range(depth, 0, -1):
        value = {"k": value} if level % 2 == 1 else [value]
    return value


def wire_timestamp(value: float) -> str:
    """``value`` as the wire's plain digits, exactly (no exponent, no rounding)."""
    if isinstance(value, int):
        return str(value)
    text = repr(value)
    return text if "e" not in text else f"{value:.10f}".rstrip("0").rstrip(".")


def wire(**fields: Any) -> dict[str, Any]:
    """A contract record as the server receives it."""
    record: dict[str, Any] = {
        "service_key": "openai::gpt-4o-mini",
        "response_id": "resp-1",
        "timestamp": "1732270000.5",
        "payload": {"input_tokens": 10, "output_tokens": 20},
    }
    record.update(fields)
    return record


#: (call-site kwargs, the wire record's fields, accepted?, field, part of the message)
CASES: list[tuple[str, dict[str, Any], bool, str, str]] = [
    # timestamps: the range, milliseconds, exponents
    ("ts at MIN", {"timestamp": MIN_TIMESTAMP_S}, True, "", ""),
    ("ts at MAX", {"timestamp": MAX_TIMESTAMP_S}, True, "", ""),
    (
        "ts just before MIN",
        {"timestamp": math.nextafter(MIN_TIMESTAMP_S, 0)},
        False,
        "timestamp",
        "before 2000-01-01",
    ),
    (
        "ts just after MAX",
        {"timestamp": math.nextafter(MAX_TIMESTAMP_S, math.inf)},
        False,
        "timestamp",
        "after 2100-01-01",
    ),
    (
        "ms epoch",
        {"timestamp": 1_732_270_000_123},
        False,
        "timestamp",
        "looks like milliseconds since the epoch: divide by 1,000",
    ),
    (
        "µs epoch",
        {"timestamp": 1_732_270_000_123_456},
        False,
        "timestamp",
        "looks like microseconds",
    ),
    ("ts 1e+16", {"timestamp": 1e16}, False, "timestamp", "after 2100-01-01"),
    ("ts 1e-07", {"timestamp": 1e-07}, False, "timestamp", "before 2000-01-01"),
    ("ts 2**63", {"timestamp": 2**63}, False, "timestamp", "after 2100-01-01"),
    ("ts monotonic", {"timestamp": 12345.6}, False, "timestamp", "time.monotonic()"),
    # token counts
    ("count 0", {"usage": {"input_tokens": 0}}, True, "", ""),
    ("count at MAX", {"usage": {"input_tokens": MAX_TOKEN_COUNT}}, True, "", ""),
    (
        "count past MAX",
        {"usage": {"output_tokens": MAX_TOKEN_COUNT + 1}},
        False,
        "usage",
        f"output_tokens is {MAX_TOKEN_COUNT + 1}, over the limit of 1,000,000,000",
    ),
    (
        "count 2**63",
        {"usage": {"input_tokens": 2**63}},
        False,
        "usage",
        "over the limit",
    ),
    ("count -1", {"usage": {"input_tokens": -1}}, False, "usage", "must not be negative"),
    ("count 1.5", {"usage": {"input_tokens": 1.5}}, False, "usage", "must be an integer"),
    ("count 2.0", {"usage": {"input_tokens": 2.0}}, False, "usage", "must be an integer"),
    ("count true", {"usage": {"input_tokens": True}}, False, "usage", "must be an integer"),
    ("count null", {"usage": {"input_tokens": None}}, True, "", ""),
    (
        "nested count past MAX",
        {"usage": {"prompt_tokens_details": {"cached_tokens": MAX_TOKEN_COUNT + 1}}},
        False,
        "usage",
        "prompt_tokens_details.cached_tokens is",
    ),
    (
        "cached above input",
        {"usage": {"input_tokens": 5, "cached_input_tokens": 6}},
        False,
        "usage",
        "cannot exceed input tokens",
    ),
    (
        "reasoning above output",
        {"usage": {"output_tokens": 5, "reasoning_tokens": 6}},
        False,
        "usage",
        "cannot exceed output tokens",
    ),
    ("other numbers are free", {"usage": {"cost": 2**70, "ms": -1.5}}, True, "", ""),
    # nesting depth, in usage and in context
    ("usage at depth MAX", {"usage": nested(MAX_NESTING_DEPTH)}, True, "", ""),
    (
        "usage past depth MAX",
        {"usage": nested(MAX_NESTING_DEPTH + 1)},
        False,
        "usage",
        "nests deeper than 32 levels",
    ),
    ("context at depth MAX", {"context": nested(MAX_NESTING_DEPTH)}, True, "", ""),
    (
        "context past depth MAX",
        {"context": nested(MAX_NESTING_DEPTH + 1)},
        False,
        "context",
        "nests deeper than 32 levels",
    ),
    (
        "usage far past depth MAX",
        {"usage": nested(5000)},
        False,
        "usage",
        "flatten it",
    ),
    # NUL and unpaired surrogates anywhere
    ("NUL in service_key", {"service_key": "openai::gpt\x00"}, False, "service_key", "NUL"),
    ("NUL in response_id", {"response_id": "r\x00"}, False, "response_id", "NUL"),
    ("NUL in customer_key", {"customer_key": "\x00"}, False, "customer_key", "NUL"),
    (
        "NUL in a usage string",
        {"usage": {"model": ["ok", "a\x00b"]}},
        False,
        "usage",
        "['model'][1] contains a NUL character",
    ),
    (
        "NUL in a context key",
        {"context": {"a\x00": 1}},
        False,
        "context",
        "has a key that contains a NUL",
    ),
    (
        "surrogate in context",
        {"context": {"s": "\ud800"}},
        False,
        "context",
        "unpaired surrogate (U+D800)",
    ),
    ("surrogate in service_key", {"service_key": "a::\udfff"}, False, "service_key", "surrogate"),
    ("other control characters are text", {"context": {"s": "\x01\t\n"}}, True, "", ""),
    ("non-BMP text", {"customer_key": "客户🙂", "context": {"é": "𝄞"}}, True, "", ""),
    # keys: shape and length
    ("service key with both halves", {"service_key": "a::b"}, True, "", ""),
    ("service key with :: in the service", {"service_key": "a::b::c"}, True, "", ""),
    ("service key 'openai::'", {"service_key": "openai::"}, False, "service_key", "both halves"),
    ("service key '::'", {"service_key": "::"}, False, "service_key", "both halves"),
    ("service key '::gpt'", {"service_key": "::gpt"}, False, "service_key", "both halves"),
    ("service key ' ::gpt'", {"service_key": " ::gpt"}, False, "service_key", "both halves"),
    ("service key 'gpt-4o'", {"service_key": "gpt-4o"}, False, "service_key", "vendor::service"),
    (
        "service key at MAX length",
        {"service_key": "a::" + "b" * (MAX_KEY_LENGTH - 3)},
        True,
        "",
        "",
    ),
    (
        "service key past MAX length",
        {"service_key": "a::" + "b" * (MAX_KEY_LENGTH - 2)},
        False,
        "service_key",
        "at most 255",
    ),
    ("response_id at MAX length", {"response_id": "r" * MAX_RESPONSE_ID_LENGTH}, True, "", ""),
    (
        "response_id past MAX length",
        {"response_id": "r" * (MAX_RESPONSE_ID_LENGTH + 1)},
        False,
        "response_id",
        "at most 255",
    ),
    ("response_id blank", {"response_id": "  "}, False, "response_id", "must not be empty"),
    ("customer_key at MAX length", {"customer_key": "c" * MAX_KEY_LENGTH}, True, "", ""),
    (
        "customer_key past MAX length",
        {"customer_key": "c" * (MAX_KEY_LENGTH + 1)},
        False,
        "customer_key",
        "at most 255",
    ),
    ("customer_key empty", {"customer_key": ""}, True, "", ""),
    # the official SDK's {} for an unset count: absent, wherever a count goes
    ("{} for a count", {"usage": {"input_tokens": 10, "output_tokens": {}}}, True, "", ""),
    (
        "{} for a nested count",
        {"usage": {"prompt_tokens": 9, "prompt_tokens_details": {"cached_tokens": {}}}},
        True,
        "",
        "",
    ),
    ("{} for every count", {"usage": {"input_tokens": {}, "total_tokens": {}}}, True, "", ""),
    (
        "a non-empty object for a count",
        {"usage": {"output_tokens": {"n": 1}}},
        False,
        "usage",
        "output_tokens must be an integer",
    ),
    ("[] for a count", {"usage": {"output_tokens": []}}, False, "usage", "must be an integer"),
]


def _call_site(kwargs: dict[str, Any]) -> Any:
    fields = dict(kwargs)
    return build_record(
        fields.pop("service_key", "openai::gpt-4o-mini"),
        fields.pop("usage", {"input_tokens": 10}),
        response_id=fields.pop("response_id", "resp-1"),
        timestamp=fields.pop("timestamp", 1732270000.5),
        **fields,
    )


@pytest.mark.parametrize(
    ("kwargs", "accepted", "field", "message"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_each_limit_at_the_call_site(
    kwargs: dict[str, Any], accepted: bool, field: str, message: str
) -> None:
    if accepted:
        record = _call_site(kwargs)
        assert validate_record(record.data) == []
        assert TIMESTAMP_PATTERN.fullmatch(record.data["timestamp"])
        return
    with pytest.raises(RecordError) as caught:
        _call_site(kwargs)
    assert isinstance(caught.value, RecordTypeError | RecordValueError)
    assert caught.value.field == field
    assert message in str(caught.value), str(caught.value)


@pytest.mark.parametrize(
    ("kwargs", "accepted", "field", "message"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_each_limit_at_the_server(
    kwargs: dict[str, Any], accepted: bool, field: str, message: str
) -> None:
    fields = dict(kwargs)
    if "usage" in fields:
        fields["payload"] = fields.pop("usage")
    if "timestamp" in fields:
        # The wire form of the same time; out-of-range values keep their digits.
        fields["timestamp"] = wire_timestamp(fields["timestamp"])
    errors = validate_record(wire(**fields))
    if accepted:
        assert errors == []
        return
    assert len(errors) == 1, errors
    server_field = "payload" if field == "usage" else field
    assert errors[0].startswith(f"{server_field}: ")
    assert message in errors[0], errors[0]


@pytest.mark.parametrize(
    ("timestamp", "message"),
    [
        ("1e+16", "is not a decimal number"),
        ("1e-07", "is not a decimal number"),
        ("1732270000.", "is not a decimal number"),
        ("-1732270000", "is not a decimal number"),
        (" 1732270000", "is not a decimal number"),
        ("9" * 400, "after 2100-01-01"),
        (1732270000, "must be a string of epoch seconds, not int"),
    ],
)
def test_the_server_refuses_timestamps_not_in_the_wire_form(timestamp: Any, message: str) -> None:
    errors = validate_record(wire(timestamp=timestamp))
    assert len(errors) == 1 and errors[0].startswith("timestamp: ")
    assert message in errors[0]


@pytest.mark.parametrize(
    "value",
    [
        MIN_TIMESTAMP_S,
        MAX_TIMESTAMP_S,
        1e9,
        1732270000.1234567,
        "1732270000.000001",
        "2000-01-01T00:00:00Z",
        datetime(2099, 12, 31, 23, 59, 59, 999999, tzinfo=timezone.utc),
    ],
)
def test_timestamps_are_written_as_plain_decimal_strings(value: Any) -> None:
    text = normalize_timestamp(value)
    assert TIMESTAMP_PATTERN.fullmatch(text), text
    assert "e" not in text.lower()


def test_a_millisecond_epoch_string_is_refused_with_the_hint() -> None:
    with pytest.raises(RecordValueError, match="milliseconds since the epoch: divide by 1,000"):
        normalize_timestamp("1732270000123")


def test_a_huge_integer_timestamp_is_a_value_error_not_an_overflow() -> None:
    with pytest.raises(RecordValueError, match="^timestamp: is after 2100-01-01"):
        normalize_timestamp(10**400)


def test_legacy_service_key_refuses_a_nul_in_either_half() -> None:
    with pytest.raises(RecordValueError, match="^service_id: contains a NUL"):
        legacy_service_key("openai", "gpt\x00")


def test_build_record_drops_the_sdks_placeholders_and_leaves_the_callers_dict() -> None:
    usage = {
        "prompt_tokens": 19,
        "completion_tokens": {},
        "prompt_tokens_details": {"cached_tokens": {}, "audio_tokens": {}},
        "extra": {},
    }
    record = build_record("openai::gpt-4o-mini", usage, response_id="r-1")
    assert json.loads(record.body)["payload"] == {
        "prompt_tokens": 19,
        # Only where a count goes: audio_tokens is not one, extra is the caller's data.
        "prompt_tokens_details": {"audio_tokens": {}},
        "extra": {},
    }
    assert usage["completion_tokens"] == {}  # the caller's usage is not changed
    assert validate_record({**record.data, "payload": usage}) == []


def test_a_usage_without_placeholders_is_published_as_given() -> None:
    usage = {"input_tokens": 10, "output_tokens": 2, "input_tokens_details": {"cached_tokens": 1}}
    record = build_record("openai::gpt-4o-mini", usage)
    assert record.data["payload"] is usage
