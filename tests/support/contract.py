"""Hypothesis strategies of adversarial records: for the call site and on the wire.

Both aim at the contract's edges: unicode, NULs and unpaired surrogates in keys,
ids and nested strings; token counts around 0, ``MAX_TOKEN_COUNT`` and 2**63;
nesting around ``MAX_NESTING_DEPTH``; timestamps around the range, in
milliseconds and with exponents; service keys with a half missing.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import Any

from hypothesis import strategies as st

from aicm_tasks.contract import (
    MAX_NESTING_DEPTH,
    MAX_TIMESTAMP_S,
    MAX_TOKEN_COUNT,
    MIN_TIMESTAMP_S,
    TOKEN_COUNT_PATHS,
)
from aicm_tasks.errors import RecordError
from aicm_tasks.producer.record import Record, build_record

#: Service keys the catalog prices (so the server costs them), one it does not
#: know, and shapes on the edge of ``vendor::service``.
SERVICE_KEYS = [
    "openai::gpt-4o-mini",
    "anthropic::claude-3-5-haiku-20241022",
    "openai::o1-pro",
    "google::gemini-2.5-flash",
    "unknown::service",
    "openai::",
    "::",
    "::gpt",
    " ::gpt",
    "a::b::c",
    "gpt-4o",
    "a::" + "b" * 252,
    "a::" + "b" * 253,
]

_ODD_CHARS = "ab:\x00\ud800\udfff é🙂\t\n\\\"'"
texts = st.text(max_size=8) | st.text(alphabet=st.sampled_from(_ODD_CHARS), max_size=6)

_top_counts = [path for path in TOKEN_COUNT_PATHS if isinstance(path, str)]
_nested_counts = [path for path in TOKEN_COUNT_PATHS if isinstance(path, tuple)]
count_values = st.one_of(
    st.integers(-2, 50),
    st.integers(0, MAX_TOKEN_COUNT),
    st.sampled_from([MAX_TOKEN_COUNT - 1, MAX_TOKEN_COUNT, MAX_TOKEN_COUNT + 1, 2**63 - 1, 2**63]),
    st.none(),
    st.just({}),  # the official SDK's placeholder for an unset count
    st.just({"n": 1}),
    st.booleans(),
    st.floats(-1, 1e20),
    st.text(max_size=3),
)


def nest(depth: int, leaf: Any = "x") -> Any:
    """``leaf`` inside ``depth`` levels of objects and arrays in turn (depth 1: ``{"k": leaf}``)."""
    value = leaf
    for level in range(depth, 0, -1):
        value = {"k": value} if level % 2 == 1 else [value]
    return value


json_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from([2**63, -(2**63) - 1, 10**30]),
    st.floats(allow_nan=False, allow_infinity=False),
    texts,
)
json_values = st.recursive(
    json_leaves,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(texts, children, max_size=3),
    max_leaves=8,
)
deep_values = st.integers(MAX_NESTING_DEPTH - 2, MAX_NESTING_DEPTH + 2).map(nest)
payload_values = st.one_of(json_values, deep_values)


@st.composite
def payloads(draw: st.DrawFn) -> dict[str, Any]:
    """A payload object: some token counts (top-level and nested), some free fields."""
    payload: dict[str, Any] = {}
    for name in draw(st.lists(st.sampled_from(_top_counts), max_size=4, unique=True)):
        payload[name] = draw(count_values)
    for parent, child in draw(st.lists(st.sampled_from(_nested_counts), max_size=2, unique=True)):
        payload.setdefault(parent, {})[child] = draw(count_values)
    payload.update(draw(st.dictionaries(texts, payload_values, max_size=3)))
    if draw(st.booleans()):  # a plain, plausible usage most of the time
        payload = {"input_tokens": draw(st.integers(0, 10**6)), **payload}
    return payload


contexts = st.one_of(
    st.none(), st.dictionaries(texts, payload_values, max_size=3), deep_values, texts
)
customer_keys = st.one_of(st.none(), texts, st.just("c" * 255), st.just("c" * 256), st.integers())
response_ids = st.one_of(
    st.uuids().map(lambda u: u.hex),
    texts,
    st.sampled_from(["r" * 255, "r" * 256, "  "]),
    st.integers(),
)
service_keys = st.one_of(
    st.sampled_from(SERVICE_KEYS),
    st.builds(lambda a, b: f"{a}::{b}", texts, texts),
    texts,
    st.none(),
    st.integers(),
)

#: Timestamps on the edges of the range, as numbers.
_EDGE_SECONDS = [
    MIN_TIMESTAMP_S,
    MAX_TIMESTAMP_S,
    math.nextafter(MIN_TIMESTAMP_S, 0),
    math.nextafter(MAX_TIMESTAMP_S, math.inf),
    1_732_270_000_123,  # milliseconds
    1e16,
    1e-07,
    0,
]
call_site_timestamps = st.one_of(
    st.none(),
    st.floats(MIN_TIMESTAMP_S, MAX_TIMESTAMP_S),
    st.sampled_from(_EDGE_SECONDS),
    st.floats(),
    st.integers(),
    st.sampled_from(_EDGE_SECONDS).map(repr),
    st.datetimes(timezones=st.just(timezone.utc)),
    st.text(max_size=12),
    st.booleans(),
)
#: Timestamps in the wire form (plain digits), in and out of the range.
wire_timestamps = st.one_of(
    st.floats(MIN_TIMESTAMP_S, MAX_TIMESTAMP_S).map(repr),
    st.from_regex(r"\A\d{1,20}(\.\d{1,12})?\Z"),
    st.sampled_from(
        ["946684800", "946684799.9999999", "4102444800", "4102444800.000001", "1732270000123"]
    ),
)


# Values the contract accepts, still varied (unicode, nesting, big free numbers):
# most fields of most examples come from here, so that a record with one
# adversarial field is otherwise valid and the property sees both verdicts.
safe_texts = st.text(
    alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"),
    max_size=8,
)
_safe_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | safe_texts,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(safe_texts, children, max_size=3)
    ),
    max_leaves=6,
)


@st.composite
def good_payloads(draw: st.DrawFn) -> dict[str, Any]:
    """A valid usage: consistent counts within the bound, free fields, nesting up to the limit."""
    input_tokens = draw(st.integers(0, MAX_TOKEN_COUNT))
    output_tokens = draw(st.integers(0, MAX_TOKEN_COUNT))
    payload: dict[str, Any] = {"input_tokens": input_tokens, "output_tokens": output_tokens}
    if draw(st.booleans()):
        payload["input_tokens_details"] = {"cached_tokens": draw(st.integers(0, input_tokens))}
    if draw(st.booleans()):
        payload["reasoning_tokens"] = draw(st.integers(0, output_tokens))
    for key, value in draw(st.dictionaries(safe_texts, _safe_json, max_size=2)).items():
        payload.setdefault(key, value)
    if draw(st.booleans()):
        payload.setdefault("deep", nest(MAX_NESTING_DEPTH - 1))
    # The official SDK's {} for unset counts, top level and nested: valid, absent.
    for name in draw(st.lists(st.sampled_from(_top_counts), max_size=2, unique=True)):
        payload.setdefault(name, {})
    for parent, child in draw(st.lists(st.sampled_from(_nested_counts), max_size=2, unique=True)):
        if isinstance(payload.setdefault(parent, {}), dict):
            payload[parent].setdefault(child, {})
    return payload


good_service_keys = st.one_of(
    st.sampled_from([*SERVICE_KEYS[:5], "a::b::c", "a::" + "b" * 252]),
    st.builds(
        lambda a, b: f"{a}::{b}",
        safe_texts.filter(lambda t: t.strip() and "::" not in t),
        safe_texts.filter(str.strip),
    ),
)
good_response_ids = st.uuids().map(lambda u: u.hex) | safe_texts.filter(str.strip)
good_customer_keys = st.none() | safe_texts
good_contexts = st.none() | st.dictionaries(safe_texts, _safe_json, max_size=3)
good_call_site_timestamps = st.one_of(
    st.none(),
    st.floats(MIN_TIMESTAMP_S, MAX_TIMESTAMP_S),
    st.integers(MIN_TIMESTAMP_S, MAX_TIMESTAMP_S),
    st.datetimes(
        min_value=datetime(2000, 1, 1),
        max_value=datetime(2099, 12, 31),
        timezones=st.just(timezone.utc),
    ),
)
good_wire_timestamps = st.floats(MIN_TIMESTAMP_S, MAX_TIMESTAMP_S).map(repr)

_FIELDS = ("service_key", "usage", "response_id", "timestamp", "customer_key", "context")


@st.composite
def _mixed(draw: st.DrawFn, good: dict[str, Any], bad: dict[str, Any]) -> dict[str, Any]:
    """Every field from ``good`` but up to two, drawn from ``bad`` (adversarial)."""
    spoiled = draw(st.lists(st.sampled_from(_FIELDS), max_size=2, unique=True))
    return {name: draw(bad[name] if name in spoiled else good[name]) for name in _FIELDS}


def call_site_inputs() -> st.SearchStrategy[dict[str, Any]]:
    """Keyword arguments for ``build_record``: valid but for up to two adversarial ones."""
    good = {
        "service_key": good_service_keys,
        "usage": good_payloads(),
        "response_id": st.none() | good_response_ids,
        "timestamp": good_call_site_timestamps,
        "customer_key": good_customer_keys,
        "context": good_contexts,
    }
    bad = {
        "service_key": service_keys,
        "usage": st.one_of(payloads(), st.lists(st.integers(), max_size=2), st.text(max_size=3)),
        "response_id": response_ids,
        "timestamp": call_site_timestamps,
        "customer_key": customer_keys,
        "context": contexts,
    }
    return _mixed(good, bad)


def wire_records() -> st.SearchStrategy[dict[str, Any]]:
    """A record as a client sends it to ``/track``: valid but for up to two adversarial fields.

    ``response_id`` and ``timestamp`` are always there and the timestamp is in
    the wire form: ``build_record`` gives a missing id or time its own, and
    takes numbers, datetimes and ISO strings, which it rewrites (tested apart).
    """
    good = {
        "service_key": good_service_keys,
        "usage": good_payloads(),
        "response_id": good_response_ids,
        "timestamp": good_wire_timestamps,
        "customer_key": good_customer_keys,
        "context": good_contexts,
    }
    bad = {
        "service_key": service_keys,
        "usage": st.one_of(payloads(), st.lists(st.integers(), max_size=2)),
        "response_id": response_ids,
        "timestamp": wire_timestamps,
        "customer_key": customer_keys,
        "context": contexts,
    }
    return _mixed(good, bad).map(
        lambda fields: {
            "payload" if name == "usage" else name: value for name, value in fields.items()
        }
    )


def fields_of(record: dict[str, Any]) -> dict[str, Any]:
    """``build_record``'s keyword arguments for the wire ``record``."""
    return {
        "service_key": record["service_key"],
        "usage": record["payload"],
        "response_id": record["response_id"],
        "timestamp": record["timestamp"],
        "customer_key": record["customer_key"],
        "context": record["context"],
    }


def placeholders_dropped(payload: dict[str, Any]) -> dict[str, Any]:
    """``payload`` without a ``{}`` at any token count's place (the test's own reading)."""
    kept = {k: v for k, v in payload.items() if not (k in _top_counts and v == {})}
    for parent, child in _nested_counts:
        inner = kept.get(parent)
        if isinstance(inner, dict) and inner.get(child) == {} and type(inner[child]) is dict:
            kept[parent] = {k: v for k, v in inner.items() if k != child}
    return kept


def same_record(built: dict[str, Any], sent: dict[str, Any]) -> bool:
    """True if ``build_record``'s record is ``sent`` but for the timestamp's spelling and
    the SDK's ``{}`` placeholders, which it drops."""
    expected = {k: v for k, v in sent.items() if v is not None}
    expected["payload"] = placeholders_dropped(expected["payload"])
    return (
        float(built["timestamp"]) == float(expected.pop("timestamp"))
        and {k: v for k, v in built.items() if k != "timestamp"} == expected
    )


def records_built_from(inputs: list[dict[str, Any]]) -> list[Record]:
    """The records ``build_record`` accepts among ``inputs`` (the refused are skipped)."""
    built = []
    for kwargs in inputs:
        try:
            built.append(build_record(**kwargs))
        except RecordError:
            continue
    return built
