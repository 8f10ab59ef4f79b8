"""The attacker's pass over docs/guarantees.md with real parts: Redis, worker
processes, the local server behind the fault proxy. Exact accounting each time."""

from __future__ import annotations

import json
import time

import pytest
import redis

from aicm_tasks.broker.keys import IDLE_AT, LAST_DELIVERED_AT, UNAUTHORIZED_SINCE, Keys
from aicm_tasks.broker.records import RecordStore, Resolution
from tests.support.accounting import account
from tests.support.faults import FaultProxy, hold
from tests.support.pipeline import Pipeline, PrivateRedis, publish

pytestmark = [pytest.mark.integration, pytest.mark.reliability]


def test_a_track_answer_dripped_a_byte_at_a_time_holds_no_batch_past_the_timeout(
    pipeline_factory,
) -> None:
    probe = pipeline_factory()
    with FaultProxy(probe.server.url) as proxy:
        proxy.state.hang_s = 600  # each byte well within the read timeout, the whole never
        pipeline: Pipeline = pipeline_factory(api_base=proxy.url)
        pipeline.start_worker(AICM_HTTP_TIMEOUT_S="2", AICM_BATCH_SIZE="50")
        proxy.set("drip")
        ids = publish(pipeline, 400, prefix="drip")
        hold(5)
        proxy.set("pass")
        healed = time.monotonic()
        pipeline.wait_drained(timeout_s=90)
        result = account(
            pipeline, "/track drips its answers", set(ids), recovery_s=time.monotonic() - healed
        )
    assert proxy.state.counts.get("drip", 0) > 0, proxy.state.counts
    assert result.lost == 0 and result.dead_lettered == 0 and result.delivered == 400


def test_every_move_of_a_record_runs_on_a_redis_full_under_noeviction(
    private_redis: PrivateRedis,
) -> None:
    """Registering, renewing, taking, settling, promoting, reclaiming and sweeping
    all run while Redis refuses every write that may grow it: none may be the
    reason a full Redis is never emptied. Every record stays in exactly one place."""
    client = redis.Redis.from_url(private_redis.url)
    store = RecordStore(client, Keys("aicm.full", "aicm-full"))
    records = [json.dumps({"response_id": f"f{n}", "pad": "x" * 1000}).encode() for n in range(400)]
    store.push_many(records[:300])
    store.schedule([(time.time() - 60, message) for message in records[300:]])
    client.config_set("maxmemory-policy", "noeviction")
    # Below what it uses: every write that may grow memory is refused from now on.
    client.config_set("maxmemory", int(client.info("memory")["used_memory"]) - 200_000)
    with pytest.raises(redis.exceptions.OutOfMemoryError):
        store.push(b"{}")

    assert store.renew_lease("alive", 60, "alive@host") > 0
    delivered = store.fetch("alive", store.keys.batch("alive", 0), 100, 60)
    assert delivered is not None and len(delivered) == 100
    # With what status judges health by: the rate bucket and the health times.
    assert store.resolve(
        "alive",
        store.keys.batch("alive", 0),
        Resolution(
            stats={"delivered": 100},
            rates={"delivered": 100, "requests": 1},
            noted=(LAST_DELIVERED_AT,),
            ended=(UNAUTHORIZED_SINCE,),
        ),
    )
    idle = RecordStore(client, Keys("aicm.idle", "aicm-idle"))  # nothing queued or due there
    assert idle.note_idle() and IDLE_AT in idle.health()
    assert store.promote_due(now=time.time()) == 100
    assert len(store.fetch("dead", store.keys.batch("dead", 0), 50, 0) or []) == 50
    assert len(store.fetch("lost", store.keys.batch("lost", 0), 50, 60) or []) == 50
    client.srem(store.keys.held("lost"), store.keys.batch("lost", 0))  # a key no lease covers
    assert store.reclaim_expired("alive") == 50
    assert store.sweep() == 50
    retried = store.fetch("alive", store.keys.batch("alive", 1), 100, 60) or []
    assert store.resolve(
        "alive", store.keys.batch("alive", 1), Resolution(retries=[(60.0, m) for m in retried])
    )
    assert store.release("alive", store.keys.batch("alive", 2)) == 0

    queued = client.lrange(store.keys.queue, 0, -1)
    scheduled = client.zrange(store.keys.scheduled, 0, -1)
    batches = list(client.scan_iter(match="aicm-full:batch:*"))
    assert batches == []
    assert sorted(queued + scheduled + delivered) == sorted(records)
