"""The broker-settings decision: settings in, findings out (no Redis needed)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aicm_tasks.broker.redis_settings import BrokerSettings, evicts_records, judge_settings

POLICIES = [
    "noeviction",
    "allkeys-lru",
    "allkeys-lfu",
    "allkeys-random",
    "volatile-lru",
    "volatile-lfu",
    "volatile-random",
    "volatile-ttl",
]


def settings(
    policy: str | None = "noeviction",
    aof: bool | None = True,
    save: str | None = "3600 1 300 100 60 10000",
    source: str = "CONFIG",
    note: str = "",
) -> BrokerSettings:
    return BrokerSettings(policy, aof, save, source, note=note, read_at=1.0, read_by="w1")


def levels(found: BrokerSettings) -> list[tuple[str, str]]:
    return [(f.level, f.message) for f in judge_settings(found)]


def test_noeviction_with_aof_finds_nothing() -> None:
    assert judge_settings(settings()) == []


@pytest.mark.parametrize("policy", [p for p in POLICIES if p.startswith("allkeys-")])
def test_an_allkeys_policy_is_an_error_that_names_it(policy: str) -> None:
    (finding,) = judge_settings(settings(policy))
    assert finding.level == "error"
    assert policy in finding.message and "noeviction" in finding.message
    assert evicts_records(settings(policy)) is True


@pytest.mark.parametrize("policy", [p for p in POLICIES if p.startswith("volatile-")])
def test_a_volatile_policy_is_a_warning_since_no_record_key_has_a_ttl(policy: str) -> None:
    (finding,) = judge_settings(settings(policy))
    assert finding.level == "warning" and policy in finding.message
    assert evicts_records(settings(policy)) is False


@given(policy=st.sampled_from(POLICIES) | st.text(min_size=1, max_size=20))
def test_only_an_allkeys_policy_makes_an_error(policy: str) -> None:
    errors = [f for f in judge_settings(settings(policy)) if f.level == "error"]
    assert bool(errors) == policy.startswith("allkeys-")


@pytest.mark.parametrize(
    ("save", "says"),
    [
        ("", "AOF and RDB snapshots are off: a Redis restart loses every record"),
        ("3600 1", "since the last RDB snapshot (save 3600 1)"),
        (None, "since the last snapshot"),  # read from INFO: the schedule is not known
    ],
)
def test_aof_off_is_a_warning_that_says_what_a_crash_loses(save: str | None, says: str) -> None:
    (finding,) = judge_settings(settings(aof=False, save=save))
    assert finding.level == "warning"
    assert says in finding.message and "appendonly yes" in finding.message


def test_unknown_settings_are_warnings_with_the_reason() -> None:
    unknown = settings(None, None, None, "unknown", note="CONFIG GET refused (NOPERM)")
    found = levels(unknown)
    assert [level for level, _ in found] == ["warning", "warning"]
    assert "NOPERM" in found[0][1]
    assert evicts_records(unknown) is None


def test_allkeys_and_no_aof_give_an_error_and_a_warning() -> None:
    found = levels(settings("allkeys-lru", aof=False, save=""))
    assert [level for level, _ in found] == ["error", "warning"]


@given(
    policy=st.sampled_from([*POLICIES, None]),
    aof=st.sampled_from([True, False, None]),
    save=st.sampled_from(["", "3600 1", None]),
    source=st.sampled_from(["CONFIG", "INFO", "unknown"]),
)
def test_settings_survive_the_round_trip_through_a_redis_hash(
    policy: str | None, aof: bool | None, save: str | None, source: str
) -> None:
    original = settings(policy, aof, save, source, note="n")
    raw = {k.encode(): v.encode() for k, v in original.as_hash().items()}
    assert BrokerSettings.from_hash(raw) == original
    assert BrokerSettings.from_hash({}) is None
