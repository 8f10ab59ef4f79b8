"""The producer's choice of shard: in turn, skipping one that did not answer."""

from __future__ import annotations

import itertools

import fakeredis
import pytest
import redis

from aicm_tasks.broker.keys import shard_keys
from aicm_tasks.broker.records import RecordStore
from aicm_tasks.producer.shards import SHARD_RUN, ShardedTarget


def stores(n: int) -> list[RecordStore]:
    return [
        RecordStore(fakeredis.FakeRedis(), shard_keys("q", "p", i, tagged=True)) for i in range(n)
    ]


def queued(store: RecordStore) -> int:
    return int(store.client.llen(store.keys.queue))


def test_batches_spread_over_every_shard_in_turn() -> None:
    shards = stores(3)
    target = ShardedTarget(shards)
    for n in range(30):
        target.push_many([b"m%d" % n])
    assert [queued(s) for s in shards] == [10, 10, 10]


def test_records_published_one_at_a_time_spread_over_every_shard() -> None:
    shards = stores(3)
    target = ShardedTarget(shards)
    for n in range(3 * SHARD_RUN * 4):
        message = b"m%d" % n
        target.run(lambda store: store.push(message))  # noqa: B023 - run calls it at once
    assert [queued(s) for s in shards] == [SHARD_RUN * 4] * 3


def test_a_shard_takes_a_run_of_publishes_before_the_next_one_does() -> None:
    shards = stores(3)
    target = ShardedTarget(shards)
    chosen = [target.order()[0] for _ in range(3 * SHARD_RUN * 2)]
    # A shard changes at most once per run, and always to the next one.
    changes = [(a, b) for a, b in itertools.pairwise(chosen) if a != b]
    assert len(changes) in (5, 6)
    assert all(b == (a + 1) % 3 for a, b in changes)
    runs = [chosen.count(i) for i in range(3)]
    assert runs == [SHARD_RUN * 2] * 3


class DeadStore(RecordStore):
    """A shard whose Redis does not answer."""

    calls = 0

    def push(self, message: bytes) -> None:
        DeadStore.calls += 1
        raise redis.ConnectionError("down")


def test_a_shard_that_does_not_answer_is_skipped_and_the_record_goes_to_another() -> None:
    live = stores(2)
    dead = DeadStore(fakeredis.FakeRedis(), shard_keys("q", "p", 2, tagged=True))
    target = ShardedTarget([*live, dead])
    DeadStore.calls = 0
    # Every shard's run comes twice.
    for n in range(3 * SHARD_RUN * 2):
        message = b"m%d" % n
        target.run(lambda store: store.push(message))  # noqa: B023 - run calls it at once
    assert sum(queued(s) for s in live) == 3 * SHARD_RUN * 2
    # Tried once, then skipped for SHARD_DOWN_S.
    assert DeadStore.calls == 1


def test_when_every_shard_fails_the_error_reaches_the_caller_after_one_try_each() -> None:
    dead = [
        DeadStore(fakeredis.FakeRedis(), shard_keys("q", "p", i, tagged=True)) for i in range(3)
    ]
    target = ShardedTarget(dead)
    DeadStore.calls = 0
    with pytest.raises(redis.ConnectionError):
        target.run(lambda store: store.push(b"x"))
    assert DeadStore.calls == 3
    # All marked down: the next publish tries only one before it gives up.
    with pytest.raises(redis.ConnectionError):
        target.run(lambda store: store.push(b"y"))
    assert DeadStore.calls == 4
