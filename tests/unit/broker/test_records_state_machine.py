"""A hypothesis state machine over the broker's atomic moves: whatever the
interleaving of workers fetching, pausing, being reclaimed, swept, settling and
releasing, every record is in exactly one place, and none is settled twice."""

from __future__ import annotations

from collections import Counter
from typing import cast

import redis
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from aicm_tasks.broker.keys import Keys
from aicm_tasks.broker.records import RecordStore, Resolution
from tests.conftest import _real_redis_or_skip

KEYS = Keys("sm.queue", "sm")
WORKERS = ("w1", "w2")


class BrokerMachine(RuleBasedStateMachine):
    """Models workers as the delivery service drives the store; checks conservation."""

    client: redis.Redis

    @initialize()
    def start(self) -> None:
        self.client = _real_redis_or_skip()
        self.client.flushdb()
        self.store = RecordStore(self.client, KEYS)
        self.published = 0
        #: Records settled for good (delivered or dead-lettered), by content.
        self.settled: Counter[bytes] = Counter()
        #: Each worker's open batch: (key, records it believes it holds).
        self.open: dict[str, tuple[str, list[bytes]]] = {}
        self.numbers = Counter[str]()

    @rule(n=st.integers(1, 5))
    def publish(self, n: int) -> None:
        messages = [f"m{self.published + i}".encode() for i in range(n)]
        self.published += n
        self.store.push_many(messages)

    @precondition(lambda self: len(self.open) < len(WORKERS))
    @rule(data=st.data(), count=st.integers(1, 4))
    def open_batch(self, data: st.DataObject, count: int) -> None:
        worker = data.draw(st.sampled_from([w for w in WORKERS if w not in self.open]))
        key = KEYS.batch(worker, self.numbers[worker])
        self.numbers[worker] += 1
        taken = self.store.fetch(worker, key, count, lease_s=30)
        assert taken is not None
        self.open[worker] = (key, taken)

    def _an_open_worker(self, data: st.DataObject) -> str:
        return data.draw(st.sampled_from(sorted(self.open)))

    @precondition(lambda self: self.open)
    @rule(data=st.data(), count=st.integers(1, 3))
    def poll_more(self, data: st.DataObject, count: int) -> None:
        worker = self._an_open_worker(data)
        key, held = self.open[worker]
        more = self.store.fetch(worker, key, count, lease_s=30, first=False)
        if more is None:
            # Fenced off: the worker abandons the batch (as the service does).
            self.store.release(worker, key)
            del self.open[worker]
        else:
            held.extend(more)

    @precondition(lambda self: self.open)
    @rule(data=st.data())
    def blocked_move_completes(self, data: st.DataObject) -> None:
        # A BLMOVE into the worker's batch, registered or not any more.
        key, held = self.open[self._an_open_worker(data)]
        moved = self.store.wait_one(key, 0.01)
        if moved is not None:
            held.append(moved)

    @precondition(lambda self: self.open)
    @rule(data=st.data(), retry=st.booleans())
    def settle(self, data: st.DataObject, retry: bool) -> None:
        worker = self._an_open_worker(data)
        key, held = self.open.pop(worker)
        resolution = (
            Resolution(retries=[(0.0, m) for m in held])
            if retry
            else Resolution(stats={"delivered": len(held)})
        )
        if self.store.resolve(worker, key, resolution) and not retry:
            self.settled.update(held)

    @precondition(lambda self: self.open)
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        worker = self._an_open_worker(data)
        key, _ = self.open.pop(worker)
        self.store.release(worker, key)

    @precondition(lambda self: self.open)
    @rule(data=st.data(), reclaimer=st.sampled_from(WORKERS))
    def lease_lapses_and_is_reclaimed(self, data: st.DataObject, reclaimer: str) -> None:
        worker = self._an_open_worker(data)
        self.client.zadd(KEYS.consumers, {worker: self.store.server_time() - 1})
        self.store.reclaim_expired(reclaimer)

    @rule(worker=st.sampled_from(WORKERS))
    def worker_killed_and_swept(self, worker: str) -> None:
        # Killed: whatever it held stays where it is; its lease lapses; sweep.
        self.open.pop(worker, None)
        self.client.zadd(KEYS.consumers, {worker: self.store.server_time() - 1})
        self.store.sweep()

    @rule()
    def promote(self) -> None:
        self.store.promote_due()

    @invariant()
    def every_record_is_in_exactly_one_place(self) -> None:
        # Counted as they come: redis-py types a reply as bytes | str (bytes here).
        places: Counter[bytes | str] = Counter(self.client.lrange(KEYS.queue, 0, -1))
        places.update(cast(list[bytes], self.client.zrange(KEYS.scheduled, 0, -1)))
        for key in self.client.scan_iter(match=f"{KEYS.prefix}:batch:*"):
            places.update(self.client.lrange(key, 0, -1))
        places.update(self.settled)
        expected: Counter[bytes | str] = Counter(f"m{i}".encode() for i in range(self.published))
        assert places == expected, (places - expected, expected - places)

    def teardown(self) -> None:
        if hasattr(self, "client"):
            self.client.flushdb()


BrokerMachine.TestCase.settings = settings(max_examples=300, stateful_step_count=25, deadline=None)
test_broker_moves_conserve_every_record = BrokerMachine.TestCase
