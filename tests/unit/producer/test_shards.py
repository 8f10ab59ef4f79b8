"""The producer's choice of shard: in turn, skipping one that did not answer."""

from __future__ import annotations

import itertools
import os

import fakeredis
import pytest
import redis

from aicm_tasks.broker.keys import shard_keys
from aicm_tasks.broker.records import RecordStore
from aicm_tasks.producer.shards import SHARD_DOWN_S, SHARD_RUN_S, ShardedTarget


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


class Clock:
    """A target's clock that moves only when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


#: Publishes per run in these tests: one every eighth of a run.
PER_RUN = 8


def publish_one_at_a_time(target: ShardedTarget, clock: Clock, count: int) -> list[int]:
    """``count`` one-record publishes, PER_RUN a run; the shard each went to."""
    chosen: list[int] = []
    counts = [queued(shard) for shard in target.stores]
    for n in range(count):
        message = b"m%d" % n
        target.run(lambda store: store.push(message))  # noqa: B023 - run calls it at once
        chosen.append(next(i for i, shard in enumerate(target.stores) if queued(shard) > counts[i]))
        counts[chosen[-1]] += 1
        clock.now += SHARD_RUN_S / PER_RUN
    return chosen


def test_records_published_one_at_a_time_spread_over_every_shard(clock: Clock) -> None:
    shards = stores(3)
    publish_one_at_a_time(ShardedTarget(shards, clock=clock), clock, 3 * PER_RUN * 4)
    assert [queued(s) for s in shards] == [PER_RUN * 4] * 3


def test_a_shard_takes_the_publishes_of_a_run_then_the_next_one_does(clock: Clock) -> None:
    chosen = publish_one_at_a_time(ShardedTarget(stores(3), clock=clock), clock, 3 * PER_RUN * 2)
    # Runs of PER_RUN publishes (a fraction of a second), each shard's in turn.
    runs = [chosen[k : k + PER_RUN] for k in range(0, len(chosen), PER_RUN)]
    assert all(len(set(run)) == 1 for run in runs), runs
    firsts = [run[0] for run in runs]
    assert all(b == (a + 1) % 3 for a, b in itertools.pairwise(firsts)), firsts


class DeadStore(RecordStore):
    """A shard whose Redis does not answer."""

    calls = 0

    def push(self, message: bytes) -> None:
        DeadStore.calls += 1
        raise redis.ConnectionError("down")


def test_a_shard_that_does_not_answer_is_skipped_and_the_record_goes_to_another(
    clock: Clock,
) -> None:
    live = stores(2)
    dead = DeadStore(fakeredis.FakeRedis(), shard_keys("q", "p", 2, tagged=True))
    target = ShardedTarget([*live, dead], clock=clock)
    DeadStore.calls = 0
    # Every shard's run comes twice, within SHARD_DOWN_S.
    assert 3 * 2 * SHARD_RUN_S < SHARD_DOWN_S
    publish_one_at_a_time(target, clock, 3 * PER_RUN * 2)
    assert sum(queued(s) for s in live) == 3 * PER_RUN * 2
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


def test_with_no_run_each_record_goes_to_the_next_shard() -> None:
    shards = stores(3)
    target = ShardedTarget(shards, run_s=0.0)
    chosen = [target.order()[0] for _ in range(9)]
    assert all(b == (a + 1) % 3 for a, b in itertools.pairwise(chosen)), chosen


#: Children forked in the fork test: all on one shard by chance 3 * (1/3)**12, once in 177k runs.
FORKED = 12


def first_shard_in_forked_children(target: ShardedTarget, clock: Clock, batch: bool) -> set[int]:
    """The shard each of FORKED children forked now tries first (each a real os.fork)."""
    chosen: set[int] = set()
    for _ in range(FORKED):
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: its first choice, then out without pytest's cleanup
            os.close(read_end)
            os.write(write_end, b"%d" % target.order(batch=batch)[0])
            os._exit(0)
        os.close(write_end)
        with os.fdopen(read_end, "rb") as answer:
            chosen.add(int(answer.read()))
        os.waitpid(pid, 0)
    return chosen


@pytest.mark.parametrize("batch", [False, True], ids=["one record", "a batch"])
def test_producers_forked_from_one_parent_do_not_publish_to_the_shards_in_step(
    clock: Clock, batch: bool
) -> None:
    # A parent that published (gunicorn --preload, a prefork pool) then forks:
    # without a start of their own the children all take the same next shard.
    target = ShardedTarget(stores(3), clock=clock)
    target.push(b"from the parent")
    clock.now += SHARD_RUN_S
    assert len(first_shard_in_forked_children(target, clock, batch)) > 1
