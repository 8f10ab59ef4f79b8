"""The triggered-limits format and the matching rule, against the SDK 0.3.2's own code."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aicm_tasks.limits import (
    TriggeredLimit,
    decode_limits,
    encode_limits,
    limit_from_event,
    matching,
)
from tests.support.limits import limit

config_manager = pytest.importorskip("aicostmanager.config_manager")
cache_module = pytest.importorskip("aicostmanager.triggered_limits_cache")

KEYS = st.sampled_from([None, "", "openai::gpt-4o", "openai::gpt-4o-mini", "acme", "globex"])


def sdk_matches(
    events: list[dict[str, object]], service_key: str | None, customer_key: str | None, ini: Path
) -> list[str]:
    """The limit_ids the SDK's ConfigManager returns for these events (its cache fed directly)."""
    cache = cache_module.triggered_limits_cache
    cache.set(events, {"encrypted_payload": "x"})
    try:
        manager = config_manager.ConfigManager(ini_path=str(ini), load=False)
        return [
            str(found.limit_id)
            for found in manager.get_triggered_limits(
                service_key=service_key, customer_key=customer_key
            )
        ]
    finally:
        cache.clear()


@settings(max_examples=200, deadline=None)
@given(
    events=st.lists(st.tuples(KEYS, KEYS), max_size=6),
    service_key=KEYS,
    customer_key=KEYS,
)
def test_a_record_matches_the_limits_the_sdk_would_raise_for(
    tmp_path_factory: pytest.TempPathFactory,
    events: list[tuple[str | None, str | None]],
    service_key: str | None,
    customer_key: str | None,
) -> None:
    limits = [limit(sk, ck, limit_id=f"l{n}") for n, (sk, ck) in enumerate(events)]
    ini = tmp_path_factory.mktemp("sdk") / "AICM.INI"
    expected = sdk_matches([item.to_dict() for item in limits], service_key, customer_key, ini)
    ours = matching(limits, service_key, customer_key, now_epoch_s=time.time())
    assert [item.limit_id for item in ours] == expected


def test_a_limit_without_a_service_key_does_not_stop_a_record_that_names_one() -> None:
    # The SDK's rule, surprising enough to pin down: a customer-wide limit (no
    # service_key) matches a check by customer only.
    customer_wide = limit(None, "acme")
    assert matching([customer_wide], "openai::gpt-4o", "acme", now_epoch_s=time.time()) == []
    assert matching([customer_wide], None, "acme", now_epoch_s=time.time()) == [customer_wide]


def test_an_expired_limit_stops_nothing() -> None:
    expired = limit("openai::gpt-4o", expires_at="2020-01-01T00:00:00Z")
    running = limit("openai::gpt-4o", expires_at="2999-01-01T00:00:00+00:00")
    assert matching([expired, running], "openai::gpt-4o", None, now_epoch_s=time.time()) == [
        running
    ]


def test_a_set_of_limits_survives_its_json_and_equal_sets_encode_alike() -> None:
    a, b = limit("openai::gpt-4o", "acme"), limit("anthropic::claude", None)
    assert encode_limits([a, b]) == encode_limits([b, a])
    assert set(decode_limits(encode_limits([a, b]))) == {a, b}


def test_an_event_is_read_as_the_sdk_reads_it() -> None:
    event = {"limit_id": 7, "amount": "12.5", "service_key": "s::k", "extra": "ignored"}
    assert limit_from_event(event) == TriggeredLimit(limit_id="7", amount=12.5, service_key="s::k")
    with pytest.raises(ValueError):
        limit_from_event({"amount": "lots"})
