from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from aicm_tasks.errors import RecordError, RecordTypeError, RecordValueError
from aicm_tasks.producer.record import build_record, legacy_service_key, normalize_timestamp


def test_a_record_gets_a_uuid4_hex_response_id_and_a_timestamp_string() -> None:
    record = build_record("openai::gpt-4o-mini", {"input_tokens": 10})
    assert len(record.response_id) == 32 and int(record.response_id, 16) >= 0
    assert float(record.data["timestamp"]) > 1.7e9
    assert json.loads(record.body) == record.data


def test_given_identity_is_kept() -> None:
    record = build_record("a::b", {}, response_id="resp-1", timestamp=1732270000.123)
    assert record.response_id == "resp-1"
    assert record.data["timestamp"] == "1732270000.123"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (datetime(2024, 11, 22, 10, 6, 40, tzinfo=timezone.utc), 1732270000.0),
        (datetime(2024, 11, 22, 10, 6, 40), 1732270000.0),  # naive is UTC
        (datetime(2024, 11, 22, 12, 6, 40, tzinfo=timezone(timedelta(hours=2))), 1732270000.0),
        ("2024-11-22T10:06:40Z", 1732270000.0),
        ("2024-11-22T10:06:40+00:00", 1732270000.0),
        ("1732270000.5", 1732270000.5),
        (1732270000, 1732270000.0),
    ],
)
def test_timestamps_become_epoch_seconds_strings(value: object, expected: float) -> None:
    assert float(normalize_timestamp(value)) == expected


@pytest.mark.parametrize("value", ["yesterday", "2024-13-45", float("nan"), -5, ""])
def test_unparseable_timestamps_raise_value_error_naming_the_field(value: object) -> None:
    with pytest.raises(RecordValueError, match="^timestamp"):
        build_record("a::b", {}, timestamp=value)


@pytest.mark.parametrize("value", [True, [1], {"t": 1}])
def test_timestamps_of_the_wrong_type_raise_type_error(value: object) -> None:
    with pytest.raises(RecordTypeError, match="^timestamp"):
        build_record("a::b", {}, timestamp=value)


@pytest.mark.parametrize(
    ("kwargs", "error", "field"),
    [
        ({"service_key": None, "usage": {}}, RecordTypeError, "service_key"),
        ({"service_key": 5, "usage": {}}, RecordTypeError, "service_key"),
        ({"service_key": "  ", "usage": {}}, RecordValueError, "service_key"),
        ({"service_key": "gpt-4o", "usage": {}}, RecordValueError, "service_key"),
        ({"service_key": "a::b", "usage": [1, 2]}, RecordTypeError, "usage"),
        ({"service_key": "a::b", "usage": "10 tokens"}, RecordTypeError, "usage"),
        ({"service_key": "a::b", "usage": {"x": float("inf")}}, RecordValueError, "usage"),
        ({"service_key": "a::b", "usage": {"x": object()}}, RecordValueError, "usage"),
        ({"service_key": "a::b", "usage": {"x": b"bytes"}}, RecordValueError, "usage"),
        ({"service_key": "a::b", "usage": {}, "context": "prod"}, RecordTypeError, "context"),
        (
            {"service_key": "a::b", "usage": {}, "context": {"s": {1, 2}}},
            RecordValueError,
            "context",
        ),
        ({"service_key": "a::b", "usage": {}, "customer_key": 42}, RecordTypeError, "customer_key"),
        ({"service_key": "a::b", "usage": {}, "response_id": ""}, RecordValueError, "response_id"),
        (
            {"service_key": "a::b", "usage": {}, "response_id": "x" * 256},
            RecordValueError,
            "response_id",
        ),
    ],
)
def test_bad_fields_raise_the_documented_error_naming_the_field(
    kwargs: dict, error: type[RecordError], field: str
) -> None:
    service_key, usage = kwargs.pop("service_key"), kwargs.pop("usage")
    with pytest.raises(error) as caught:
        build_record(service_key, usage, **kwargs)
    assert caught.value.field == field
    assert str(caught.value).startswith(field)
    assert isinstance(caught.value, RecordError)


def test_circular_usage_is_refused() -> None:
    usage: dict = {}
    usage["self"] = usage
    with pytest.raises(RecordValueError, match="^usage"):
        build_record("a::b", usage)


def test_records_over_the_size_limit_are_refused_with_their_response_id() -> None:
    with pytest.raises(RecordValueError, match="over the limit of 1000.*response_id=big"):
        build_record("a::b", {"blob": "x" * 2000}, response_id="big", max_bytes=1000)


def test_legacy_service_key_joins_api_and_service() -> None:
    assert legacy_service_key("openai", "gpt-5-mini") == "openai::gpt-5-mini"
    with pytest.raises(RecordTypeError, match="^service_id"):
        legacy_service_key("openai", None)


def test_optional_fields_are_omitted_when_not_given() -> None:
    record = build_record("a::b", {"n": 1})
    assert set(record.data) == {"service_key", "response_id", "timestamp", "payload"}
    full = build_record("a::b", {"n": 1}, customer_key="c1", context={"env": "prod"})
    assert full.data["customer_key"] == "c1" and full.data["context"] == {"env": "prod"}


def test_generated_response_ids_are_version_4_uuids_in_hex() -> None:
    import uuid

    from aicm_tasks.producer.record import new_response_id

    ids = [new_response_id() for _ in range(2000)]
    assert len(set(ids)) == 2000
    for value in ids:
        parsed = uuid.UUID(value)
        assert parsed.hex == value and parsed.version == 4 and parsed.variant == uuid.RFC_4122


def test_a_record_stamped_now_is_its_body_alone() -> None:
    import time

    from aicm_tasks.broker.messages import decode

    for record in (
        build_record("a::b", {"n": 1}),
        build_record("a::b", {"n": 1}, timestamp=time.time() - 1),
    ):
        assert record.enqueued_at is None and record.message == record.body
        assert decode(record.message).meta == {}


def test_a_backfill_carries_when_it_was_enqueued_before_its_body() -> None:
    import time

    from aicm_tasks.broker.messages import decode

    before = time.time()
    record = build_record("a::b", {"n": 1}, timestamp=1_000_000_000, api_key_alias="team-a")
    assert record.enqueued_at is not None and before - 1 <= record.enqueued_at <= time.time() + 1
    item = decode(record.message)
    assert item.meta == {"api_key_alias": "team-a", "enqueued_at": record.enqueued_at}
    assert item.body == record.body and item.response_id == record.response_id
    assert json.loads(record.body)["timestamp"] == "1000000000.0"
