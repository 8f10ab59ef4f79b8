"""Property-based: any input either yields a well-formed record the server's rules accept,
or raises the documented error; and the server's rules refuse nothing the call site accepts."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from aicm_tasks.contract import MAX_TIMESTAMP_S, MIN_TIMESTAMP_S, TIMESTAMP_PATTERN
from aicm_tasks.errors import RecordError, RecordTypeError, RecordValueError
from aicm_tasks.producer.record import build_record
from aicm_tasks.server.validation import validate_record
from tests.support.contract import call_site_inputs, fields_of, same_record, wire_records

json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
anything = st.recursive(
    json_scalars | st.binary(max_size=5) | st.builds(object),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=10,
)
service_keys = st.one_of(st.text(max_size=30), st.just("openai::gpt-4o"), st.none(), st.integers())
timestamps = st.one_of(
    st.none(), st.floats(), st.integers(), st.text(max_size=30), st.datetimes(), st.booleans()
)


@settings(max_examples=400, deadline=None)
@given(
    service_key=service_keys,
    usage=anything,
    timestamp=timestamps,
    customer_key=st.one_of(st.none(), st.text(max_size=10), st.integers()),
    context=st.one_of(st.none(), anything),
)
def test_any_input_gives_a_valid_record_or_a_documented_error(
    service_key, usage, timestamp, customer_key, context
) -> None:
    try:
        record = build_record(
            service_key, usage, timestamp=timestamp, customer_key=customer_key, context=context
        )
    except RecordError as exc:
        assert isinstance(exc, RecordTypeError | RecordValueError)
        assert exc.field in {
            "service_key",
            "usage",
            "timestamp",
            "customer_key",
            "context",
            "record",
        }
        return
    decoded = json.loads(record.body)
    assert decoded["response_id"] == record.response_id
    assert isinstance(decoded["service_key"], str) and "::" in decoded["service_key"]
    assert isinstance(decoded["payload"], dict)
    assert TIMESTAMP_PATTERN.fullmatch(decoded["timestamp"])
    assert MIN_TIMESTAMP_S <= float(decoded["timestamp"]) <= MAX_TIMESTAMP_S
    assert validate_record(decoded) == []
    assert set(decoded) <= {
        "service_key",
        "response_id",
        "timestamp",
        "payload",
        "customer_key",
        "context",
    }


@settings(max_examples=500, deadline=None)
@given(inputs=call_site_inputs())
def test_what_build_record_accepts_the_servers_rules_accept(inputs: dict) -> None:
    try:
        record = build_record(**inputs)
    except RecordError:
        return
    assert validate_record(json.loads(record.body)) == []


@settings(max_examples=500, deadline=None)
@given(record=wire_records())
def test_what_the_servers_rules_refuse_build_record_refuses(record: dict) -> None:
    refused = validate_record(record) != []
    try:
        built = build_record(**fields_of(record))
    except RecordError:
        assert refused, f"build_record refused a record the server accepts: {record!r}"
        return
    assert not refused, f"build_record accepted a record the server refuses: {record!r}"
    assert same_record(json.loads(built.body), record)
