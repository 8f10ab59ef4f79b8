from __future__ import annotations

import io
import json

import pytest
import redis

from aicm_tasks.broker.dead_letters import CANDIDATES_SHOWN, DeadLetterStore, Selection
from aicm_tasks.broker.keys import Keys, shard_keys
from aicm_tasks.broker.messages import decode
from aicm_tasks.broker.records import RecordStore
from aicm_tasks.errors import AmbiguousDeadLetterIdError, DeadLetterNotFoundError
from aicm_tasks.producer.record import build_record
from aicm_tasks.worker.delivery import plan
from aicm_tasks.worker.outcomes import BatchVerdict, RecordResult, VerdictKind
from aicm_tasks.worker.retry import BackoffPolicy
from tests.support.delivery import deliver

KEYS = Keys("aicm.tracking", "aicm")


def dead_letter(
    client: redis.Redis, rid: str, status: str, service: str = "acme::x", keys: Keys = KEYS
) -> None:
    """Put a record through a real delivery and settlement that dead-letters it."""
    store = RecordStore(client, keys)
    store.push(build_record(service, {"n": 1}, response_id=rid).body)
    batch = keys.batch("c", hash(rid) % 10_000)
    fetched = store.fetch("c", batch, 10, 30)
    assert fetched is not None
    items = [decode(m) for m in fetched]
    verdict = BatchVerdict(
        VerdictKind.RESULTS, "200", 200, results={rid: RecordResult(status, ("server says no",))}
    )
    outcomes, _ = deliver(items, lambda body: verdict)
    resolution, _ = plan(outcomes, BackoffPolicy(), auth_retry_interval_s=1)
    assert store.resolve("c", batch, resolution)


@pytest.fixture
def dlq(any_redis: redis.Redis) -> DeadLetterStore:
    dead_letter(any_redis, "u1", "service_key_unknown")
    dead_letter(any_redis, "u2", "service_key_unknown", service="acme::y")
    dead_letter(any_redis, "e1", "error", service="openai::gpt-4o")
    return DeadLetterStore(any_redis, KEYS)


def test_stats_group_by_reason_and_service(dlq: DeadLetterStore) -> None:
    stats = dlq.stats()
    assert stats["total"] == 3
    assert stats["by_reason"] == {"error": 1, "service_key_unknown": 2}
    assert stats["by_service_key"] == {"acme::x": 1, "acme::y": 1, "openai::gpt-4o": 1}


def test_an_entry_keeps_the_record_reason_and_server_errors(dlq: DeadLetterStore) -> None:
    entry = dlq.get("e1")
    assert entry["reason"] == "error" and entry["errors"] == ["server says no"]
    assert entry["http_status"] == 200 and entry["attempts"] == 1
    assert entry["record"]["response_id"] == "e1" and entry["record"]["payload"] == {"n": 1}
    with pytest.raises(DeadLetterNotFoundError, match="nope"):
        dlq.get("nope")


def test_selection_by_reason_service_and_ids(dlq: DeadLetterStore) -> None:
    assert {e["id"] for e in dlq.list(Selection(reason="service_key_unknown"))} == {"u1", "u2"}
    assert {e["id"] for e in dlq.list(Selection(service_key="acme::y"))} == {"u2"}
    assert {e["id"] for e in dlq.list(Selection(ids=("e1", "missing")))} == {"e1"}
    assert dlq.list(Selection()) == []  # an empty selection selects nothing
    assert len(dlq.list(Selection(all=True), limit=2)) == 2


def test_replay_republishes_the_identical_record_and_removes_the_entry(
    dlq: DeadLetterStore, any_redis: redis.Redis
) -> None:
    assert dlq.replay(Selection(ids=("u1",)), dry_run=True) == ["u1"]
    assert dlq.count() == 3 and any_redis.llen(KEYS.queue) == 0
    assert dlq.replay(Selection(ids=("u1",))) == ["u1"]
    assert dlq.count() == 2
    (message,) = any_redis.lrange(KEYS.queue, 0, -1)
    assert isinstance(message, bytes)
    item = decode(message)
    assert item.response_id == "u1" and item.attempts == 1 and item.retries == 0
    assert json.loads(item.body)["payload"] == {"n": 1}
    assert dlq.replay(Selection(ids=("u1",))) == []  # gone: cannot be replayed twice


def test_purge_and_export(dlq: DeadLetterStore) -> None:
    out = io.StringIO()
    assert dlq.export(Selection(all=True), out) == 3
    assert {json.loads(line)["id"] for line in out.getvalue().splitlines()} == {"u1", "u2", "e1"}
    assert dlq.purge(Selection(reason="error")) == 1
    assert dlq.count() == 2
    assert dlq.purge(Selection(all=True)) == 2
    assert dlq.stats()["total"] == 0


# -- ids by prefix -------------------------------------------------------------------------


@pytest.fixture
def prefixed(any_redis: redis.Redis) -> DeadLetterStore:
    for rid in ("5b0e11aa", "5b0e22bb", "77c1abcd", "a*b?c[1]", "a\\z", "77c1"):
        dead_letter(any_redis, rid, "service_key_unknown")
    return DeadLetterStore(any_redis, KEYS)


def test_a_unique_prefix_resolves_to_the_full_id(prefixed: DeadLetterStore) -> None:
    assert prefixed.resolve("5b0e1") == "5b0e11aa"
    assert prefixed.resolve("5b0e22bb") == "5b0e22bb"


def test_an_exact_id_wins_over_the_longer_ids_it_begins(prefixed: DeadLetterStore) -> None:
    assert prefixed.resolve("77c1") == "77c1"
    assert prefixed.resolve("77c1a") == "77c1abcd"


def test_an_ambiguous_prefix_lists_the_candidates(prefixed: DeadLetterStore) -> None:
    with pytest.raises(AmbiguousDeadLetterIdError) as failure:
        prefixed.resolve("5b0e")
    assert failure.value.candidates == ("5b0e11aa", "5b0e22bb")
    assert str(failure.value) == (
        "'5b0e' begins 2 dead letter ids (5b0e11aa, 5b0e22bb): give more of the id"
    )
    assert isinstance(failure.value, DeadLetterNotFoundError)


def test_no_match_says_so(prefixed: DeadLetterStore) -> None:
    with pytest.raises(DeadLetterNotFoundError, match="begins with 'ffff'") as failure:
        prefixed.resolve("ffff")
    assert not isinstance(failure.value, AmbiguousDeadLetterIdError)
    with pytest.raises(DeadLetterNotFoundError):
        prefixed.resolve("")


def test_glob_characters_in_a_prefix_match_only_themselves(prefixed: DeadLetterStore) -> None:
    assert prefixed.resolve("a*") == "a*b?c[1]"
    assert prefixed.resolve("a\\") == "a\\z"
    with pytest.raises(DeadLetterNotFoundError):
        prefixed.resolve("?")  # would match every id as a pattern
    with pytest.raises(DeadLetterNotFoundError):
        prefixed.resolve("[5]")


def test_many_matches_stop_the_scan_and_show_a_few(any_redis: redis.Redis) -> None:
    store = DeadLetterStore(any_redis, KEYS)
    # Index entries alone are enough for resolve; 2,000 of them, 1,200 sharing "x".
    any_redis.zadd(KEYS.dlq_index, {f"x{n:04d}": n for n in range(1200)})
    any_redis.zadd(KEYS.dlq_index, {f"y{n:04d}": n for n in range(800)})
    with pytest.raises(AmbiguousDeadLetterIdError) as failure:
        store.resolve("x")
    assert len(failure.value.candidates) == CANDIDATES_SHOWN
    assert "begins more than 5 dead letter ids" in str(failure.value)
    assert store.resolve("y0799") == "y0799"


def test_a_prefix_is_resolved_over_every_shard(any_redis: redis.Redis) -> None:
    keys = [shard_keys("aicm.tracking", "aicm", n, tagged=True) for n in range(3)]
    dead_letter(any_redis, "5b0e11aa", "error", keys=keys[0])
    dead_letter(any_redis, "5b0e22bb", "error", keys=keys[1])
    dead_letter(any_redis, "c0ffee", "error", keys=keys[2])
    dead_letter(any_redis, "c0ffee12", "error", keys=keys[0])
    store = DeadLetterStore.over([RecordStore(any_redis, k) for k in keys])
    assert store.resolve("5b0e1") == "5b0e11aa"
    assert store.resolve("5b0e2") == "5b0e22bb"
    # An exact id in one shard wins over a longer id it begins in another.
    assert store.resolve("c0ffee") == "c0ffee"
    assert store.get(store.resolve("c0ffee1"))["id"] == "c0ffee12"
    with pytest.raises(AmbiguousDeadLetterIdError) as failure:
        store.resolve("5b0e")
    assert failure.value.candidates == ("5b0e11aa", "5b0e22bb")
    with pytest.raises(DeadLetterNotFoundError):
        store.resolve("ffff")
