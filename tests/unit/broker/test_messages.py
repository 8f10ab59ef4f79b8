from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aicm_tasks.broker.messages import batch_body, decode, encode, record_of
from aicm_tasks.producer.record import build_record


def test_fresh_messages_are_the_record_bytes_untouched() -> None:
    record = build_record("a::b", {"text": "héllo\nworld"}, response_id="r1")
    assert encode(record.body) == record.body
    item = decode(record.body)
    assert (
        item.body == record.body
        and item.response_id == "r1"
        and item.meta == {}
        and not item.malformed
    )


def test_metadata_rides_in_front_and_the_record_stays_byte_identical() -> None:
    record = build_record("a::b", {"text": "line1\nline2"}, response_id="r2")
    message = encode(record.body, {"attempts": 2, "retries": 1})
    item = decode(message)
    assert item.body == record.body and item.attempts == 2 and item.retries == 1


def test_batch_body_is_the_contract_shape() -> None:
    bodies = [build_record("a::b", {}, response_id=f"r{n}").body for n in range(3)]
    assert [r["response_id"] for r in json.loads(batch_body(bodies))["tracked"]] == [
        "r0",
        "r1",
        "r2",
    ]


def test_unreadable_messages_are_marked_malformed_with_a_stable_id() -> None:
    for raw in (b"\xff\xfe", b"[1,2]", b'{"service_key": "a::b"}', b"{bad meta\n{}"):
        item = decode(raw)
        assert item.malformed
        assert item.response_id.startswith("malformed-")
        assert decode(raw).response_id == item.response_id


def test_the_fast_path_reads_the_same_identity_as_a_full_parse() -> None:
    from aicm_tasks.broker.messages import _decode_slow

    for service, rid in [
        ("a::b", "r1"),
        ("ven::mödel", "ünï"),
        ('we"ird::x', 'q"uote'),
        ("a::b", "back\\slash"),
    ]:
        body = build_record(service, {"n": 1}, response_id=rid, customer_key="c").body
        fast, slow = decode(body), _decode_slow(body)
        assert (
            (fast.response_id, fast.service_key, fast.body)
            == (slow.response_id, slow.service_key, slow.body)
            == (rid, service, body)
        )
        assert not fast.malformed


def test_records_in_another_key_order_take_the_full_parse() -> None:
    item = decode(b'{"response_id":"r9","service_key":"a::b","timestamp":"1","payload":{}}')
    assert item.response_id == "r9" and item.service_key == "a::b" and not item.malformed


@given(st.binary(max_size=300))
def test_decode_never_raises_on_any_bytes(raw: bytes) -> None:
    decoded = decode(raw)
    assert decoded.raw == raw
    assert decoded.malformed is not None or decoded.response_id


@given(
    st.recursive(
        st.none() | st.integers() | st.text(max_size=5),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
        max_leaves=20,
    ),
    st.binary(max_size=40),
)
def test_decode_never_raises_on_metadata_and_records_of_any_shape(
    meta: object, tail: bytes
) -> None:
    raw = json.dumps(meta).encode() + b"\n" + tail
    decode(raw)


@pytest.mark.parametrize("depth", [100_000])
def test_a_record_nested_past_any_pythons_parser_limit_is_malformed_not_an_exception(
    depth: int,
) -> None:
    # Past the recursion limit of every supported Python (3.10 to 3.13 differ).
    raw = (
        b'{"service_key":"a::b","response_id":"deep","payload":'
        + b"[" * depth
        + b"]" * depth
        + b"}"
    )
    shuffled = b'{"payload":' + raw[len(b'{"service_key":"a::b","response_id":"deep","payload":') :]
    assert decode(raw).response_id == "deep"  # read by position, not parsed
    assert record_of(decode(raw)) is None
    for message in (shuffled, b'{"retries":1}\n' + shuffled):
        decoded = decode(message)
        assert decoded.raw == message and decoded.malformed == "nested too deeply"
