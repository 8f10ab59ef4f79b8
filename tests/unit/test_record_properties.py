"""Property-based: any input either yields a well-formed record or raises the documented error."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from aicm_tasks.errors import RecordError, RecordTypeError, RecordValueError
from aicm_tasks.record import build_record

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
    assert float(decoded["timestamp"]) >= 0
    assert set(decoded) <= {
        "service_key",
        "response_id",
        "timestamp",
        "payload",
        "customer_key",
        "context",
    }
