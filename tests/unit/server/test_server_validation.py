"""validate_record: the contract's per-record rules, as ``field: problem`` strings."""

from __future__ import annotations

from typing import Any

import pytest

from aicm_tasks.server.validation import TOKEN_FIELDS, validate_record

#: Marks a field to leave out of the record.
_ABSENT = object()


def make_record(**overrides: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "service_key": "openai::gpt-4o-mini",
        "response_id": "resp-1",
        "timestamp": "1732270000.123",
        "payload": {"input_tokens": 10, "output_tokens": 20},
        "customer_key": "cust-1",
        "context": {"env": "prod"},
    }
    record.update(overrides)
    return {k: v for k, v in record.items() if v is not _ABSENT}


def test_a_complete_record_is_valid() -> None:
    assert validate_record(make_record()) == []


def test_optional_fields_may_be_absent_or_null() -> None:
    assert validate_record(make_record(customer_key=_ABSENT, context=_ABSENT)) == []
    assert validate_record(make_record(customer_key=None, context=None)) == []


def test_extra_fields_are_ignored() -> None:
    assert validate_record(make_record(client_customer_key="x", anything=[1])) == []


@pytest.mark.parametrize("timestamp", ["1732270000", "1732270000.123", "946684800", "4102444800.0"])
def test_decimal_epoch_second_strings_are_valid_timestamps(timestamp: str) -> None:
    assert validate_record(make_record(timestamp=timestamp)) == []


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"service_key": _ABSENT}, "service_key: must be a string, not null"),
        ({"service_key": 5}, "service_key: must be a string, not int"),
        ({"service_key": "openai"}, "service_key: 'openai' is not of the form 'vendor::service'"),
        ({"service_key": "openai::"}, "service_key: 'openai::' is not of the form"),
        ({"response_id": _ABSENT}, "response_id: must be a string, not null"),
        ({"response_id": 12}, "response_id: must be a string, not int"),
        ({"response_id": "  "}, "response_id: must not be empty"),
        ({"timestamp": _ABSENT}, "timestamp: must be a string of epoch seconds, not null"),
        ({"timestamp": 1732270000.1}, "timestamp: must be a string of epoch seconds, not float"),
        (
            {"timestamp": "2024-11-22T10:00:00Z"},
            "timestamp: '2024-11-22T10:00:00Z' is not a decimal",
        ),
        ({"timestamp": "-5"}, "timestamp: '-5' is not a decimal"),
        ({"timestamp": "nan"}, "timestamp: 'nan' is not a decimal"),
        ({"timestamp": "1e+16"}, "timestamp: '1e+16' is not a decimal"),
        (
            {"timestamp": "1732270000123"},
            "timestamp: 1732270000123.0 is after 2100-01-01; it looks like milliseconds",
        ),
        ({"timestamp": "0.5"}, "timestamp: 0.5 is before 2000-01-01"),
        ({"payload": _ABSENT}, "payload: must be a JSON object, not null"),
        ({"payload": [1, 2]}, "payload: must be a JSON object, not list"),
        ({"customer_key": 7}, "customer_key: must be a string or null, not int"),
        ({"context": "prod"}, "context: must be a JSON object or null, not str"),
    ],
)
def test_each_broken_field_is_named(overrides: dict[str, Any], expected: str) -> None:
    errors = validate_record(make_record(**overrides))
    assert len(errors) == 1
    assert errors[0].startswith(expected)


def test_the_contracts_example_message_for_a_string_token_count() -> None:
    errors = validate_record(make_record(payload={"input_tokens": "10"}))
    assert errors == ["payload: input_tokens must be an integer"]


def payload_with(field: str, value: Any) -> dict[str, Any]:
    """A payload holding ``value`` at ``field`` (``parent.child`` nests one level)."""
    parent, _, child = field.partition(".")
    return {parent: {child: value}} if child else {field: value}


@pytest.mark.parametrize("field", TOKEN_FIELDS)
@pytest.mark.parametrize("value", ["3", 1.5, 2.0, True, [1], {"n": 1}])
def test_token_counts_must_be_integers(field: str, value: Any) -> None:
    assert validate_record(make_record(payload=payload_with(field, value))) == [
        f"payload: {field} must be an integer"
    ]


@pytest.mark.parametrize("field", TOKEN_FIELDS)
def test_token_counts_must_not_be_negative(field: str) -> None:
    assert validate_record(make_record(payload=payload_with(field, -1))) == [
        f"payload: {field} must not be negative"
    ]


def test_null_token_counts_count_as_absent_and_other_fields_are_free() -> None:
    payload = {"cached_input_tokens": None, "input_tokens": 0, "model": "x", "cost": 1.5}
    assert validate_record(make_record(payload=payload)) == []


def test_every_problem_is_reported_not_only_the_first() -> None:
    errors = validate_record(
        {"service_key": "x", "timestamp": 5, "payload": {"input_tokens": -1, "output_tokens": "a"}}
    )
    fields = [error.split(":", 1)[0] for error in errors]
    assert fields == ["service_key", "response_id", "timestamp", "payload", "payload"]


@pytest.mark.parametrize("obj", [None, 5, "record", [1, 2]])
def test_a_record_that_is_not_an_object_is_one_error(obj: Any) -> None:
    errors = validate_record(obj)
    assert len(errors) == 1
    assert errors[0].startswith("record: must be a JSON object")
