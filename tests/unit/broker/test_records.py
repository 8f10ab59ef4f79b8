"""The broker's atomic moves, over fakeredis and over the real Redis."""

from __future__ import annotations

import time
from unittest import mock

import redis

from aicm_tasks.broker.keys import (
    IDLE_AT,
    LAST_DELIVERED_AT,
    LAST_UNAUTHORIZED_AT,
    RATE_BUCKET_S,
    RATE_KEEP_S,
    UNAUTHORIZED_SINCE,
    Keys,
)
from aicm_tasks.broker.records import RecordStore, Resolution

KEYS = Keys("aicm.tracking", "aicm")


def score(client: redis.Redis, key: str, member: str | bytes) -> float:
    """A member's score in a sorted set; it must be there."""
    found = client.zscore(key, member)
    assert found is not None, f"{member!r} is not in {key}"
    return found


def store_of(client: redis.Redis) -> RecordStore:
    return RecordStore(client, KEYS)


def test_fetch_moves_the_oldest_records_into_a_held_batch(any_redis: redis.Redis) -> None:
    store = store_of(any_redis)
    for n in range(5):
        store.push(f"m{n}".encode())
    batch = KEYS.batch("c1", 0)
    taken = store.fetch("c1", batch, 3, lease_s=30)
    assert taken is not None
    assert sorted(taken) == [b"m0", b"m1", b"m2"]
    assert any_redis.llen(KEYS.queue) == 2
    assert sorted(any_redis.lrange(batch, 0, -1)) == [b"m0", b"m1", b"m2"]
    assert any_redis.sismember(KEYS.held("c1"), batch)
    assert score(any_redis, KEYS.consumers, "c1") > store.server_time() + 29


def test_resolve_writes_every_fate_and_forgets_the_batch(any_redis: redis.Redis) -> None:
    store = store_of(any_redis)
    store.push_many([b"a", b"b", b"c"])
    batch = KEYS.batch("c1", 0)
    store.fetch("c1", batch, 10, lease_s=30)
    resolution = Resolution(
        retries=[(60.0, b"meta\nb")],
        dead_letters=[("c", '{"id": "c"}')],
        stats={"delivered": 1, "retried": 1, "dead_lettered:error": 1},
    )
    before = store.server_time()
    assert store.resolve("c1", batch, resolution) is True
    after = store.server_time()
    assert not any_redis.exists(batch)
    # The retry is due 60 s after the settle, and the dead letter indexed at the
    # settle, both on the server's clock.
    assert before + 60 <= score(any_redis, KEYS.scheduled, b"meta\nb") <= after + 60
    assert any_redis.hget(KEYS.dlq, "c") == b'{"id": "c"}'
    assert before <= score(any_redis, KEYS.dlq_index, "c") <= after
    assert store.stats() == {"delivered": 1, "retried": 1, "dead_lettered:error": 1}
    # A second resolve of the same batch writes nothing.
    assert store.resolve("c1", batch, resolution) is False
    assert any_redis.zcard(KEYS.scheduled) == 1


def test_resolve_counts_the_rate_bucket_and_health_times_on_the_servers_clock(
    real_redis: redis.Redis,
) -> None:
    # Over the real Redis only: fakeredis answers TIME with this process's clock.
    # This host's clock is an hour ahead: nothing written may follow it.
    store = store_of(real_redis)

    def settle(n: int, resolution: Resolution) -> tuple[float, float]:
        batch = KEYS.batch("c1", n)
        store.fetch("c1", batch, 10, lease_s=30)
        before = store.server_time()
        with mock.patch("time.time", return_value=time.time() + 3600):
            assert store.resolve("c1", batch, resolution) is True
        return before, store.server_time()

    before, after = settle(
        0,
        Resolution(
            rates={"delivered": 7, "requests": 2, "unauthorized": 1},
            noted=(LAST_DELIVERED_AT, LAST_UNAUTHORIZED_AT),
            started=(UNAUTHORIZED_SINCE,),
        ),
    )
    buckets = {int(before // RATE_BUCKET_S), int(after // RATE_BUCKET_S)}
    counted = [real_redis.hgetall(KEYS.rate(b)) for b in buckets]
    assert {k: v for c in counted for k, v in c.items()} == {
        b"delivered": b"7",
        b"requests": b"2",
        b"unauthorized": b"1",
    }
    written = [b for b in buckets if real_redis.exists(KEYS.rate(b))]
    assert written and all(0 < real_redis.ttl(KEYS.rate(b)) <= RATE_KEEP_S for b in written)
    health = store.health()
    assert before <= health[LAST_DELIVERED_AT] <= after
    assert health[UNAUTHORIZED_SINCE] == health[LAST_UNAUTHORIZED_AT]
    since = health[UNAUTHORIZED_SINCE]
    # A later 401 notes its time but keeps the start of the run...
    settle(1, Resolution(noted=(LAST_UNAUTHORIZED_AT,), started=(UNAUTHORIZED_SINCE,)))
    assert store.health()[UNAUTHORIZED_SINCE] == since
    assert store.health()[LAST_UNAUTHORIZED_AT] >= since
    # ...and an answer that took the key ends it.
    settle(2, Resolution(ended=(UNAUTHORIZED_SINCE,)))
    assert UNAUTHORIZED_SINCE not in store.health()
    # An empty settle writes no bucket.
    keys_before = set(real_redis.keys(KEYS.rate_prefix + "*"))
    settle(3, Resolution())
    assert set(real_redis.keys(KEYS.rate_prefix + "*")) == keys_before


def test_idle_is_noted_on_the_servers_clock_only_when_nothing_is_queued_or_due(
    any_redis: redis.Redis,
) -> None:
    store = store_of(any_redis)
    now = store.server_time()
    store.schedule([(now + 3600, b"a countdown, due in an hour")])
    assert store.note_idle() is True
    assert now <= store.health()[IDLE_AT] <= store.server_time()
    any_redis.hdel(KEYS.health, IDLE_AT)
    store.schedule([(now - 1, b"a retry, due")])
    assert store.note_idle() is False
    store.promote_due()
    assert store.note_idle() is False  # queued now
    assert IDLE_AT not in store.health()


def test_batches_of_a_consumer_whose_lease_expired_go_back_to_the_queue(
    any_redis: redis.Redis,
) -> None:
    store = store_of(any_redis)
    store.push_many([b"a", b"b", b"c"])
    store.fetch("dead", KEYS.batch("dead", 0), 2, lease_s=30)
    store.fetch("dead", KEYS.batch("dead", 1), 1, lease_s=30)
    assert store.reclaim_expired() == 0  # lease still valid
    any_redis.zadd(KEYS.consumers, {"dead": store.server_time() - 1})
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
    assert taken is not None
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
    any_redis.zadd(KEYS.consumers, {"me": store.server_time() - 1})
    assert store.reclaim_expired("me") == 0
    assert store.reclaim_expired("someone-else") == 2


def test_a_record_moved_into_a_batch_after_it_was_reclaimed_goes_back_to_the_queue(
    any_redis: redis.Redis,
) -> None:
    store = store_of(any_redis)
    batch = KEYS.batch("slow", 0)
    assert store.fetch("slow", batch, 10, lease_s=30) == []  # registered, queue empty
    any_redis.zadd(KEYS.consumers, {"slow": store.server_time() - 1})
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


def test_a_batch_reclaimed_while_it_fills_takes_nothing_more_and_cannot_be_settled(
    any_redis: redis.Redis,
) -> None:
    store = store_of(any_redis)
    store.push_many([b"a", b"b"])
    batch = KEYS.batch("slow", 0)
    assert store.fetch("slow", batch, 1, lease_s=30) == [b"a"]
    any_redis.zadd(KEYS.consumers, {"slow": store.server_time() - 1})
    assert store.reclaim_expired("other") == 1
    # The slow worker's next poll for the same batch is fenced off: it neither
    # re-registers the batch nor takes "b" from the queue.
    assert store.fetch("slow", batch, 1, lease_s=30, first=False) is None
    assert sorted(any_redis.lrange(KEYS.queue, 0, -1)) == [b"a", b"b"]
    assert not any_redis.sismember(KEYS.held("slow"), batch)
    assert store.resolve("slow", batch, Resolution(stats={"delivered": 1})) is False
    assert store.stats() == {}


def test_leases_are_decided_on_the_servers_clock_not_the_hosts(real_redis: redis.Redis) -> None:
    # Over the real Redis only: fakeredis answers TIME with this process's clock.
    any_redis = real_redis
    store = store_of(any_redis)
    store.push_many([b"a", b"b"])
    server_now = store.server_time()
    # A worker whose clock runs an hour ahead holds a batch...
    with mock.patch("time.time", return_value=time.time() + 3600):
        store.fetch("ahead", KEYS.batch("ahead", 0), 1, lease_s=30)
        store.renew_lease("ahead", 30)
    assert server_now + 29 < score(any_redis, KEYS.consumers, "ahead") < server_now + 60
    # ...and one whose clock runs an hour ahead cannot reclaim a live lease.
    store.fetch("live", KEYS.batch("live", 0), 1, lease_s=30)
    with mock.patch("time.time", return_value=time.time() + 3600):
        assert store.reclaim_expired("ahead") == 0
        assert store.promote_due() == 0
    assert any_redis.llen(KEYS.batch("live", 0)) == 1


def test_renew_lease_returns_the_servers_time_and_notes_the_worker_seen(
    any_redis: redis.Redis,
) -> None:
    store = store_of(any_redis)
    server_now = store.renew_lease("w", 30)
    assert server_now <= store.server_time()
    assert store.last_seen() == {"w": server_now}
    assert store.names() == {}
    store.renew_lease("w", 30, "w1@host")
    assert store.names() == {"w": "w1@host"}


def test_sweep_returns_batch_keys_no_live_lease_covers(any_redis: redis.Redis) -> None:
    store = store_of(any_redis)
    store.push_many([b"a", b"b", b"c"])
    consumer = "host:42:abcd"  # consumer names hold colons
    live = KEYS.batch(consumer, 0)
    store.fetch(consumer, live, 1, lease_s=30)
    # An orphan: a BLMOVE completed into a batch key after its registration was
    # reclaimed, then its worker was killed. Nothing lists it anywhere.
    orphan = KEYS.batch(consumer, 7)
    any_redis.rpush(orphan, b"o1", b"o2")
    # A registered batch whose lease lapsed.
    lapsed = KEYS.batch("gone:1:ffff", 0)
    store.fetch("gone:1:ffff", lapsed, 1, lease_s=30)
    any_redis.zadd(KEYS.consumers, {"gone:1:ffff": store.server_time() - 1})
    assert store.sweep(scan_count=2) == 3
    assert any_redis.llen(live) == 1  # covered: left alone
    assert not any_redis.exists(orphan) and not any_redis.exists(lapsed)
    assert not any_redis.sismember(KEYS.held("gone:1:ffff"), lapsed)
    assert sorted(any_redis.lrange(KEYS.queue, 0, -1)) == [b"b", b"c", b"o1", b"o2"]
    assert store.sweep() == 0


def test_sweep_matches_only_its_own_prefix_literally(any_redis: redis.Redis) -> None:
    keys = Keys("q", "we*ird[")
    store = RecordStore(any_redis, keys)
    any_redis.rpush(keys.batch("c", 0), b"x")
    any_redis.rpush("weXirdY:batch:c:0", b"not ours")
    assert store.sweep() == 1
    assert any_redis.lrange("q", 0, -1) == [b"x"]
    assert any_redis.exists("weXirdY:batch:c:0")


def test_forget_unseen_drops_only_workers_gone_long_without_a_lease(
    any_redis: redis.Redis,
) -> None:
    store = store_of(any_redis)
    now = store.server_time()
    any_redis.hset(KEYS.seen, mapping={"old": now - 7200, "recent": now - 10, "held": now - 7200})
    any_redis.zadd(KEYS.consumers, {"held": now + 30})
    any_redis.hset(KEYS.names, mapping={"old": "w0@a", "recent": "w1@b", "held": "w2@c"})
    assert store.forget_unseen(3600) == 1
    assert set(store.last_seen()) == {"recent", "held"}
    assert store.names() == {"recent": "w1@b", "held": "w2@c"}
