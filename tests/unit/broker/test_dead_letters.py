from __future__ import annotations

import io
import json

import pytest
import redis

from aicm_tasks.broker.dead_letters import DeadLetterStore, Selection
from aicm_tasks.broker.keys import Keys
from aicm_tasks.broker.messages import decode
from aicm_tasks.broker.records import RecordStore
from aicm_tasks.errors import DeadLetterNotFoundError
from aicm_tasks.producer.record import build_record
from aicm_tasks.worker.delivery import plan
from aicm_tasks.worker.outcomes import BatchVerdict, RecordResult, VerdictKind
from aicm_tasks.worker.retry import BackoffPolicy
from tests.support.delivery import deliver

KEYS = Keys("aicm.tracking", "aicm")


def dead_letter(client: redis.Redis, rid: str, status: str, service: str = "acme::x") -> None:
    """Put a record through a real delivery and settlement that dead-letters it."""
    store = RecordStore(client, KEYS)
    store.push(build_record(service, {"n": 1}, response_id=rid).body)
    batch = KEYS.batch("c", hash(rid) % 10_000)
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
