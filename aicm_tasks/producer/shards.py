"""Which shard a producer publishes to: the next in turn (one record at a time
in runs of :data:`SHARD_RUN_S`, a batch each call), skipping one that just
failed to answer, so one dead primary does not stop publishing.

A shard that does not answer within the publish budget is skipped for
:data:`SHARD_DOWN_S`; the publish goes to the next one at once. Only when every
shard failed does the record go to the spool. With one shard this is today's
path: the one store is tried on every publish.
"""

from __future__ import annotations

import itertools
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

import redis

from aicm_tasks.broker.records import RecordStore

logger = logging.getLogger(__name__)

#: How long a shard that did not answer is skipped before it is tried again, in
#: seconds. Short: a failover or restart takes seconds, and until then each
#: publish would otherwise spend its budget on the dead shard first.
SHARD_DOWN_S = 5.0

#: How long one-record publishes keep going to one shard before the next takes
#: over, in seconds. A producer that changes Redis process every publish finds
#: each one idle and cold: on the 3-primary test cluster (2 cores, perf_counter_ns,
#: 20k LPUSHes, median of 5, two sessions) a lone producer's LPUSH cost 70 µs
#: p50 in strict turn, 65-70 in runs of 16 publishes, 60 of 128, 54 of 1024, 52
#: on one shard only (one standalone Redis: 43-55). A run measured in time gives
#: a fast producer long hot runs (500 records at 10k/s) and spreads a slow one's
#: records over the shards within a fraction of a second. A batch (a
#: ``track_many`` call, a chunk of a spool drain) pays the change once for all
#: its records: each goes to the next shard.
SHARD_RUN_S = 0.05

T = TypeVar("T")


class ShardedTarget:
    """The shards a producer (or a spool drain) writes to, in turn.

    It is a :class:`aicm_tasks.producer.spool.SpoolTarget`: a drain pushes
    spooled records to whichever shards answer.
    """

    def __init__(
        self,
        stores: Sequence[RecordStore],
        *,
        run_s: float = SHARD_RUN_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``run_s``: how long one-record publishes stay on one shard (0: each
        to the next); ``clock``: seconds, for the runs and for how long a shard
        is skipped."""
        if not stores:
            raise ValueError("at least one shard is needed")
        self.stores = list(stores)
        self.run_s = run_s
        self._clock = clock
        # A random start, so that many processes starting at once spread out.
        self._run_shard = random.randrange(len(self.stores))
        self._run_ends = 0.0
        self._batch_turn = itertools.count(random.randrange(len(self.stores)))
        self._pid = os.getpid()
        self._down_until = [0.0] * len(self.stores)
        self._lock = threading.Lock()

    def order(self, *, batch: bool = False) -> list[int]:
        """The shards to try, in turn: those not marked down, starting with the
        one whose run it is (with ``batch``, the next one); when all are marked
        down, the one whose mark ends first."""
        n = len(self.stores)
        if n == 1:
            return [0]
        now = self._clock()
        if batch:
            self._follow_fork()
            start = next(self._batch_turn) % n
        else:
            if now >= self._run_ends:
                self._follow_fork()
                # Two threads may both end a run here: one shard's run is then
                # skipped, which only shifts the spread.
                self._run_shard = (self._run_shard + 1) % n
                self._run_ends = now + self.run_s
            start = self._run_shard
        live = [(start + k) % n for k in range(n) if self._down_until[(start + k) % n] <= now]
        if live:
            return live
        return [min(range(n), key=lambda i: self._down_until[i])]

    def _follow_fork(self) -> None:
        """In a process forked from the one that made this target, start again
        from a random shard.

        Children forked from one parent (gunicorn ``--preload``, Celery's
        prefork pool, multiprocessing) inherit its turn and the same monotonic
        clock, so their runs end together and they move from shard to shard in
        step: one primary takes every producer's records at a time. Measured on
        the 3-primary test cluster (4 children forked after the parent
        published, 20 ms windows in which all 4 published): every child on the
        same shard in 50 of 93 windows flat out (10k records each) and 182 of
        277 at one record per 2 ms; with this, 6 of 155 and 0 of 302, as 4
        separately started processes (0 of 112, 0 of 291; 3.7% by chance). Checked
        when a run ends, not per record: ``os.getpid`` costs 0.36 µs here.
        """
        pid = os.getpid()
        if pid == self._pid:
            return
        self._pid = pid
        # random reseeds itself in a forked child (os.register_at_fork).
        n = len(self.stores)
        self._run_shard = random.randrange(n)
        self._batch_turn = itertools.count(random.randrange(n))

    def run(self, action: Callable[[RecordStore], T], *, batch: bool = False) -> T:
        """``action`` on the first shard that answers (``batch``: ``action``
        writes many records); raises the last :class:`redis.RedisError` when
        none did."""
        failure: redis.RedisError | None = None
        for index in self.order(batch=batch):
            try:
                result = action(self.stores[index])
            except redis.RedisError as exc:
                failure = exc
                self._mark_down(index, exc)
                continue
            self._down_until[index] = 0.0
            return result
        raise failure or redis.ConnectionError("no shard to publish to")

    def _mark_down(self, index: int, exc: redis.RedisError) -> None:
        if len(self.stores) == 1:
            return
        with self._lock:
            was_live = self._down_until[index] <= self._clock()
            self._down_until[index] = self._clock() + SHARD_DOWN_S
        if was_live:
            logger.warning(
                "shard %d did not answer (%s): publishing to the other shards for %.0fs",
                self.stores[index].keys.shard,
                exc,
                SHARD_DOWN_S,
            )

    # -- RecordTarget (producer/publisher.py) and SpoolTarget ---------------------------
    def push(self, message: bytes) -> None:
        """Append one message to one shard's queue (the next that answers)."""
        self.run(lambda store: store.push(message))

    def push_many(self, messages: Sequence[bytes]) -> None:
        """Append messages to one shard's queue (the next that answers)."""
        self.run(lambda store: store.push_many(messages), batch=True)

    def schedule(self, items: Iterable[tuple[float, bytes]]) -> None:
        """Hold messages in one shard's scheduled set until their due time."""
        listed = list(items)
        self.run(lambda store: store.schedule(listed), batch=True)

    def answers(self) -> bool:
        """Whether any shard answers a PING."""
        for store in self.stores:
            try:
                if store.client.ping():
                    return True
            except redis.RedisError:
                continue
        return False
