"""Anonymised fields: which values are replaced, by what, and what fails closed."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aicm_tasks.errors import ConfigurationError, RecordTypeError, RecordValueError
from aicm_tasks.producer.anonymize import DIGEST_PREFIX, Anonymization, keyed_hash
from aicm_tasks.producer.api import build, build_many

KEY = b"k" * 32
ANON = Anonymization(frozenset({"email", "prompt"}), keyed_hash(KEY))


def test_named_fields_are_replaced_at_any_depth_of_usage_and_context() -> None:
    record = build(
        ("openai::gpt-4o-mini", {"input_tokens": 3, "email": "a@b.c", "meta": [{"prompt": "hi"}]}),
        {"context": {"user": {"email": "a@b.c"}, "env": "prod"}},
        max_bytes=32768,
        anonymization=ANON,
    )
    payload, context = record.data["payload"], record.data["context"]
    assert payload["input_tokens"] == 3 and context["env"] == "prod"
    assert payload["email"].startswith(DIGEST_PREFIX)
    assert payload["meta"][0]["prompt"].startswith(DIGEST_PREFIX)
    # Equal values give equal digests (groupable), in payload and context alike.
    assert context["user"]["email"] == payload["email"]
    assert b"a@b.c" not in record.body and b'"hi"' not in record.body


def test_the_digest_depends_on_the_key() -> None:
    other = keyed_hash(b"another key")
    assert keyed_hash(KEY)("a@b.c") != other("a@b.c")
    assert keyed_hash(KEY)("a@b.c") == keyed_hash(KEY)("a@b.c")
    assert keyed_hash(KEY)(None) is None


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(), st.lists, max_leaves=8))
def test_any_json_value_hashes_to_a_fixed_size_string(value: object) -> None:
    digest = keyed_hash(KEY)(value)
    if value is None:
        assert digest is None
    else:
        assert digest.startswith(DIGEST_PREFIX) and len(digest) == len(DIGEST_PREFIX) + 32
        # A short value (a digit) may occur in any hex digest by chance.
        if len(json.dumps(value)) >= 8:
            assert json.dumps(value) not in digest


def test_a_call_widens_the_process_fields_and_can_bring_its_own_anonymizer() -> None:
    record = build(
        ("openai::gpt-4o-mini", {"input_tokens": 1, "email": "x", "name": "y"}),
        {"anonymize_fields": ["name"], "anonymizer": lambda value: "gone"},
        max_bytes=32768,
        anonymization=ANON,
    )
    assert record.data["payload"] == {"input_tokens": 1, "email": "gone", "name": "gone"}


def test_a_single_name_is_not_read_as_its_letters() -> None:
    widened = Anonymization(frozenset(), keyed_hash(KEY)).widened("email")
    assert widened.fields == {"email"}


def test_fields_without_a_key_or_anonymizer_fail_at_the_call_site() -> None:
    with pytest.raises(ConfigurationError, match="AICM_ANONYMIZE_KEY"):
        build(
            ("openai::gpt-4o-mini", {"input_tokens": 1, "email": "x"}),
            {"anonymize_fields": ["email"]},
            max_bytes=32768,
        )


def test_an_anonymizer_that_fails_publishes_nothing_and_never_echoes_the_value() -> None:
    def broken(value: object) -> object:
        raise RuntimeError(f"cannot handle {value}")

    with pytest.raises(RecordValueError) as caught:
        build(
            ("openai::gpt-4o-mini", {"input_tokens": 1, "email": "secret@x.y"}),
            {"anonymize_fields": ["email"], "anonymizer": broken},
            max_bytes=32768,
        )
    assert (
        "usage" in str(caught.value)
        and "'email'" in str(caught.value)
        and "secret@x.y" not in str(caught.value)
    )


def test_an_anonymizer_returning_what_json_cannot_carry_is_refused() -> None:
    with pytest.raises((RecordTypeError, RecordValueError)):
        build(
            ("openai::gpt-4o-mini", {"input_tokens": 1, "email": "x"}),
            {"anonymize_fields": ["email"], "anonymizer": lambda value: object()},
            max_bytes=32768,
        )


def test_bad_field_names_are_refused() -> None:
    with pytest.raises(RecordValueError, match="anonymize_fields"):
        ANON.widened([""])
    with pytest.raises(RecordValueError, match="anonymize_fields"):
        ANON.widened([3])  # type: ignore[list-item]


def test_a_structure_nested_past_the_limit_gets_the_contracts_message() -> None:
    deep: dict = {}
    node = deep
    for _ in range(5000):  # past every Python's recursion limit
        node["a"] = {}
        node = node["a"]
    with pytest.raises(RecordValueError, match="nests deeper"):
        build(
            ("openai::gpt-4o-mini", {"input_tokens": 1, "deep": deep}),
            {},
            max_bytes=10**7,
            anonymization=ANON,
        )


def test_track_many_applies_the_call_and_per_record_options() -> None:
    records = build_many(
        [
            {"service_key": "openai::gpt-4o-mini", "usage": {"input_tokens": 1, "email": "e"}},
            {
                "service_key": "openai::gpt-4o-mini",
                "usage": {"input_tokens": 1, "name": "n"},
                "anonymize_fields": ["name"],
            },
        ],
        max_bytes=32768,
        anonymization=ANON,
    )
    assert records[0].data["payload"]["email"].startswith(DIGEST_PREFIX)
    assert records[1].data["payload"]["name"].startswith(DIGEST_PREFIX)


def test_no_fields_means_the_usage_is_not_copied() -> None:
    usage = {"input_tokens": 1, "email": "kept"}
    record = build(("openai::gpt-4o-mini", usage), {}, max_bytes=32768)
    assert record.data["payload"] is usage
