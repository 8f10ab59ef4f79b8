"""The broker's atomic moves, over fakeredis and over the real Redis."""

from __future__ import annotations

import time

import redis

from aicm_tasks.broker import Keys, RecordStore, Resolution

KEYS = Keys("aicm.tracking", "aicm")


def store_of(client: redis.Redis) -> RecordStore:
    return RecordStore(client, KEYS)


def test_fetch_moves_the_oldest_records_into_a_held_batch(any_redis: redis.Redis) -> None:
    store = store_of(any_redis)
    for n in range(5):
        store.push(f"m{n}".encode())
    batch = KEYS.batch("c1", 0)
    taken = store.fetch("c1", batch, 3, lease_s=30)
    assert sorted(taken) == [b"m0", b"m1", b"m2"]
    assert any_redis.llen(KEYS.queue) == 2
    assert sorted(any_redis.lrange(batch, 0, -1)) == [b"m0", b"m1", b"m2"]
    assert any_redis.sismember(KEYS.held("c1"), batch)
    assert any_redis.zscore(KEYS.consumers, "c1") > time.time()


def test_resolve_writes_every_fate_and_forgets_the_batch(any_redis: redis.Redis) -> None:
    store = store_of(any_redis)
    store.push_many([b"a", b"b", b"c"])
    batch = KEYS.batch("c1", 0)
    store.fetch("c1", batch, 10, lease_s=30)
    resolution = Resolution(
        retries=[(time.time() + 60, b"meta\nb")],
        dead_letters=[("c", '{"id": "c"}', 123.0)],
        stats={"delivered": 1, "retried": 1, "dead_lettered:error": 1},
    )
    assert store.resolve("c1", batch, resolution) is True
    assert not any_redis.exists(batch)
    assert any_redis.zcard(KEYS.scheduled) == 1
    assert any_redis.hget(KEYS.dlq, "c") == b'{"id": "c"}'
    assert any_redis.zscore(KEYS.dlq_index, "c") == 123.0
    assert store.stats() == {"delivered": 1, "retried": 1, "dead_lettered:error": 1}
    # A second resolve of the same batch writes nothing.
    assert store.resolve("c1", batch, resolution) is False
    assert any_redis.zcard(KEYS.scheduled) == 1


def test_batches_of_a_consumer_whose_lease_expired_go_back_to_the_queue(
    any_redis: redis.Redis,
) -> None:
    store = store_of(any_redis)
    store.push_many([b"a", b"b", b"c"])
    store.fetch("dead", KEYS.batch("dead", 0), 2, lease_s=30)
    store.fetch("dead", KEYS.batch("dead", 1), 1, lease_s=30)
    assert store.reclaim_expired() == 0  # lease still valid
    any_redis.zadd(KEYS.consumers, {"dead": time.time() - 1})
    assert store.reclaim_expired() == 3
    assert sorted(any_redis.lrange(KEYS.queue, 0, -1)) == [b"a", b"b", b"c"]
    assert not any_redis.exists(KEYS.held("dead"))
    assert any_redis.zscore(KEYS.consumers, "dead") is None
    # The dead consumer's late resolve is refused: its records belong to the queue now.
    assert store.resolve("dead", KEYS.batch("dead", 0), Resolution(stats={"delivered": 2})) is False
    assert store.stats() == {}


def test_due_scheduled_records_are_promoted_to_the_consuming_end(any_redis: redis.Redis) -> None:
    store = store_of(any_redis)
    store.push(b"old")
    store.schedule([(100.0, b"due1"), (200.0, b"due2"), (10**10, b"later")])
    assert store.promote_due(now=300.0) == 2
    assert any_redis.zrange(KEYS.scheduled, 0, -1) == [b"later"]
    taken = store.fetch("c", KEYS.batch("c", 0), 2, lease_s=30)
    assert sorted(taken) == [b"due1", b"due2"]


def test_promote_moves_more_than_one_chunk(any_redis: redis.Redis) -> None:
    store = store_of(any_redis)
    store.schedule([(1.0, f"m{n}".encode()) for n in range(2500)])
    assert store.promote_due(now=2.0) == 2500
    assert any_redis.llen(KEYS.queue) == 2500


def test_release_hands_a_batch_back_and_drop_lease_waits_for_empty_hands(
    any_redis: redis.Redis,
) -> None:
    store = store_of(any_redis)
    store.push_many([b"a", b"b"])
    batch = KEYS.batch("c", 0)
    store.fetch("c", batch, 2, lease_s=30)
    assert store.drop_lease("c") is False  # still holding: keeps the lease
    assert store.release("c", batch) == 2
    assert any_redis.llen(KEYS.queue) == 2
    assert store.drop_lease("c") is True
    assert any_redis.zscore(KEYS.consumers, "c") is None


def test_depth_counts_queued_scheduled_held_and_dead(any_redis: redis.Redis) -> None:
    store = store_of(any_redis)
    store.push_many([b"a", b"b", b"c"])
    store.schedule([(10**10, b"x")])
    store.fetch("c", KEYS.batch("c", 0), 1, lease_s=30)
    any_redis.zadd(KEYS.dlq_index, {"d": 1.0})
    assert store.depth() == {
        "queued": 2,
        "scheduled": 1,
        "held": 1,
        "dead_letters": 1,
        "workers": 1,
    }


def test_a_worker_never_reclaims_its_own_batches(any_redis: redis.Redis) -> None:
    store = store_of(any_redis)
    store.push_many([b"a", b"b"])
    store.fetch("me", KEYS.batch("me", 0), 2, lease_s=30)
    any_redis.zadd(KEYS.consumers, {"me": time.time() - 1})
    assert store.reclaim_expired("me") == 0
    assert store.reclaim_expired("someone-else") == 2


def test_a_record_moved_into_a_batch_after_it_was_reclaimed_goes_back_to_the_queue(
    any_redis: redis.Redis,
) -> None:
    store = store_of(any_redis)
    batch = KEYS.batch("slow", 0)
    assert store.fetch("slow", batch, 10, lease_s=30) == []  # registered, queue empty
    any_redis.zadd(KEYS.consumers, {"slow": time.time() - 1})
    store.reclaim_expired("other")  # the lease lapsed: registration gone
    store.push(b"late")
    assert store.wait_one(batch, 0.1) == b"late"  # the blocked BLMOVE completes afterwards
    assert store.resolve("slow", batch, Resolution(stats={"delivered": 1})) is False
    assert any_redis.lrange(KEYS.queue, 0, -1) == [b"late"] and not any_redis.exists(batch)
    assert store.stats() == {}


def test_release_returns_records_even_of_an_unregistered_batch(any_redis: redis.Redis) -> None:
    store = store_of(any_redis)
    batch = KEYS.batch("c", 0)
    any_redis.rpush(batch, b"x", b"y")
    assert store.release("c", batch) == 2
    assert sorted(any_redis.lrange(KEYS.queue, 0, -1)) == [b"x", b"y"]
