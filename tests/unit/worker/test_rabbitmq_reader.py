"""The RabbitMQ reader's hand-out and settle rules, over fake feeds (no broker).

What a real broker adds (acks, requeues on a closed connection, the drain
rate) is tested in tests/integration/test_rabbitmq_pipeline.py,
tests/reliability/test_rabbitmq_faults.py and measured by `make bench`.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field
from typing import cast

import pytest

from aicm_tasks.broker.rabbitmq.consumer import Batch, FeedConnection
from aicm_tasks.broker.resolution import Resolution
from aicm_tasks.errors import SettleError
from aicm_tasks.worker.batches import Processed
from aicm_tasks.worker.delivery import Summary
from aicm_tasks.worker.rabbitmq_reader import POLL_S, FeedReader, Posted, ReaderState


@dataclass
class FakeMessage:
    body: bytes
    tag: int

    @property
    def delivery_info(self) -> dict:
        return {"delivery_tag": self.tag}


@dataclass
class FakeFeed:
    """A channel's deliveries: tags 1, 2, ... and bodies naming the feed (``a1``, ``b1``)."""

    name: bytes
    waiting: deque = field(default_factory=deque)
    next_tag: int = 1

    def deliver(self, count: int) -> None:
        for _ in range(count):
            self.waiting.append(FakeMessage(self.name + b"%d" % self.next_tag, self.next_tag))
            self.next_tag += 1

    def cut(self, batch_size: int) -> Batch:
        batch = Batch()
        for _ in range(min(batch_size, len(self.waiting))):
            message = self.waiting.popleft()
            batch.bodies.append(message.body)
            batch.last_tag = message.tag
        return batch


@dataclass
class FakeConnection:
    feeds: list[FakeFeed]
    reads: list[float] = field(default_factory=list)
    writes: int = 0
    renewed: list[int] = field(default_factory=list)

    def read(self, timeout_s: float) -> None:
        self.reads.append(timeout_s)

    def for_writes(self) -> None:
        self.writes += 1

    def renew(self, index: int) -> FakeFeed:
        self.renewed.append(index)
        self.feeds[index] = FakeFeed(self.feeds[index].name + b"'")
        return self.feeds[index]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Harness:
    """A reader whose posts wait for the test to release them, one event per batch."""

    def __init__(self, *, feeds: int = 2, batch_size: int = 3, flush_s: float = 1.0) -> None:
        self.released: dict[bytes, threading.Event] = {}
        self.settled: list[tuple[int, int, int]] = []  # (feed, first body tag, last tag)
        self.started: list[bytes] = []  # the first body of each batch a posting thread began
        self.settle_threads: set[str] = set()
        self.refuse: set[bytes] = set()  # first bodies whose settle the broker refuses
        self.idle: list[object] = []
        self.connection = FakeConnection([FakeFeed(b"ab"[n : n + 1]) for n in range(feeds)])
        self.reader = FeedReader(
            batch_size=batch_size,
            flush_interval_s=flush_s,
            concurrency=feeds,
            process=self._process,
            settle=self._settle,
            settled=self._settled,
            idle=self.idle.append,
            idle_after_s=2.0,
        )

    def _process(self, batch: Batch) -> Processed:
        self.started.append(batch.bodies[0])
        self.released.setdefault(batch.bodies[0], threading.Event()).wait(10)
        return Processed((), Resolution(), Summary(len(batch), 0, {}, 1))

    def _settle(self, feed, batch: Batch, done: Processed) -> None:
        self.settle_threads.add(threading.current_thread().name)
        if batch.bodies[0] in self.refuse:
            raise SettleError("RabbitMQ refused 1 of a batch's 1 retries")

    def _settled(self, feed: int, posted: Posted) -> None:
        self.settled.append((feed, int(posted.batch.bodies[0][1:]), posted.batch.last_tag))

    def release(self, first_body: bytes) -> None:
        self.released.setdefault(first_body, threading.Event()).set()

    def step_until(self, state, done, what: str, *, stopping: bool = False) -> None:
        """Step the reader until ``done()`` (posts end in other threads)."""
        for _ in range(500):
            if done():
                return
            self.reader.step(state, stopping=stopping)
            threading.Event().wait(POLL_S)
        raise AssertionError(f"never: {what}")

    def settle_until(self, state, count: int) -> None:
        self.step_until(state, lambda: len(self.settled) >= count, f"{count} batches settled")


def attach(harness: Harness, connection: FakeConnection, generation: int) -> ReaderState:
    # The reader touches only feeds/read/for_writes of its connection, which the fake has.
    return harness.reader.attach(cast(FeedConnection, connection), generation)


@pytest.fixture
def clock(monkeypatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr("aicm_tasks.worker.rabbitmq_reader.time.monotonic", clock)
    return clock


def test_a_full_batch_goes_at_once_and_a_short_one_at_its_flush_interval(clock) -> None:
    harness = Harness()
    state = attach(harness, harness.connection, 1)
    full, short = harness.connection.feeds
    full.deliver(3)
    short.deliver(2)
    harness.reader.step(state, stopping=False)
    assert [slot.busy for slot in state.slots] == [True, False]
    clock.now += 0.99
    harness.reader.step(state, stopping=False)
    assert not state.slots[1].busy
    clock.now += 0.02
    harness.reader.step(state, stopping=False)
    assert state.slots[1].busy
    harness.release(b"a1")
    harness.release(b"b1")
    harness.settle_until(state, 2)
    assert sorted(harness.settled) == [(0, 1, 3), (1, 1, 2)]


def test_a_feed_has_one_batch_out_so_its_multiple_ack_covers_only_that_batch(clock) -> None:
    harness = Harness(feeds=1)
    state = attach(harness, harness.connection, 1)
    (feed,) = harness.connection.feeds
    feed.deliver(6)  # two whole batches
    harness.reader.step(state, stopping=False)
    assert len(feed.waiting) == 3  # the second waits while the first is out
    harness.reader.step(state, stopping=False)
    assert len(feed.waiting) == 3
    harness.release(b"a1")
    harness.release(b"a4")
    harness.settle_until(state, 2)
    assert harness.settled == [(0, 1, 3), (0, 4, 6)]


def test_a_slow_batch_holds_back_only_its_own_feed(clock) -> None:
    harness = Harness(feeds=2)
    state = attach(harness, harness.connection, 1)
    slow, quick = harness.connection.feeds
    slow.deliver(3)
    quick.deliver(9)
    for first in (b"b1", b"b4", b"b7"):
        harness.release(first)
    harness.settle_until(state, 3)  # a1 is still being posted
    assert harness.settled == [(1, 1, 3), (1, 4, 6), (1, 7, 9)]
    assert state.slots[0].busy
    harness.release(b"a1")
    harness.settle_until(state, 4)
    assert harness.settled[-1] == (0, 1, 3)


def test_settles_run_on_the_reading_thread_only(clock) -> None:
    harness = Harness()
    state = attach(harness, harness.connection, 1)
    harness.connection.feeds[0].deliver(3)
    harness.release(b"a1")
    harness.settle_until(state, 1)
    assert harness.settle_threads == {threading.current_thread().name}
    assert harness.connection.writes == 1  # the socket got its write timeout back first


def test_a_batch_out_when_the_connection_was_lost_is_never_settled(clock) -> None:
    harness = Harness(feeds=1)
    old = attach(harness, harness.connection, 1)
    harness.connection.feeds[0].deliver(3)
    harness.reader.step(old, stopping=False)
    assert old.busy == 1
    # The connection failed: RabbitMQ returned the batch; a new one is read.
    fresh_connection = FakeConnection([FakeFeed(b"z")])
    fresh = attach(harness, fresh_connection, 2)
    harness.release(b"a1")
    harness.step_until(fresh, lambda: harness.reader.out == 0, "the stale batch back")
    assert harness.settled == []
    assert harness.settle_threads == set()


def test_stopping_hands_out_nothing_new_and_settles_what_is_out(clock) -> None:
    harness = Harness(feeds=2)
    state = attach(harness, harness.connection, 1)
    first, second = harness.connection.feeds
    first.deliver(3)
    harness.reader.step(state, stopping=False)
    second.deliver(3)
    harness.release(b"a1")
    harness.step_until(state, lambda: not state.busy, "nothing out", stopping=True)
    assert harness.settled == [(0, 1, 3)]
    assert len(second.waiting) == 3  # left to the connection's close: RabbitMQ returns them


def test_when_every_feed_is_out_and_full_the_reader_waits_for_a_batch_not_the_socket(
    clock,
) -> None:
    harness = Harness(feeds=1)
    state = attach(harness, harness.connection, 1)
    harness.connection.feeds[0].deliver(6)
    harness.reader.step(state, stopping=False)
    reads = len(harness.connection.reads)
    harness.release(b"a1")
    harness.reader.step(state, stopping=False)  # blocks on the posted batch, then settles
    assert harness.settled == [(0, 1, 3)]
    assert len(harness.connection.reads) == reads


def test_an_idle_queue_is_noted_every_idle_interval_and_a_busy_one_never(clock) -> None:
    harness = Harness(feeds=1)
    state = attach(harness, harness.connection, 1)
    harness.reader.step(state, stopping=False)
    clock.now += 2.0
    harness.reader.step(state, stopping=False)
    assert len(harness.idle) == 1
    harness.reader.step(state, stopping=False)
    assert len(harness.idle) == 1
    harness.connection.feeds[0].deliver(1)
    clock.now += 5.0
    harness.reader.step(state, stopping=False)
    assert len(harness.idle) == 1
    assert harness.connection.reads[-1] == POLL_S  # a batch is filling: read briefly


def test_a_batch_queued_for_a_posting_thread_when_its_connection_was_lost_is_never_posted(
    clock,
) -> None:
    # One posting thread, stuck on a slow /track; the broker drops the connection
    # twice meanwhile. The second connection's batch waits in the pool's queue
    # behind the stuck post; by the time a thread is free its records are back in
    # RabbitMQ (and maybe with another worker): posting them would only send
    # duplicates and hold the thread from the live connection's batch.
    harness = Harness(feeds=1)
    first = attach(harness, harness.connection, 1)
    harness.connection.feeds[0].deliver(3)
    harness.reader.step(first, stopping=False)  # a1 out, the thread stuck on it
    harness.reader.detach()  # the connection failed
    second_connection = FakeConnection([FakeFeed(b"z")])
    second = attach(harness, second_connection, 2)
    second_connection.feeds[0].deliver(3)
    harness.reader.step(second, stopping=False)  # z1 queued behind a1
    harness.reader.detach()
    third_connection = FakeConnection([FakeFeed(b"y")])
    third = attach(harness, third_connection, 3)
    third_connection.feeds[0].deliver(3)
    harness.reader.step(third, stopping=False)  # y1 queued behind z1
    harness.release(b"a1")
    harness.release(b"z1")
    harness.release(b"y1")
    harness.settle_until(third, 1)
    assert harness.started == [b"a1", b"y1"]
    assert harness.settled == [(0, 1, 3)]
    assert harness.reader.out == 0


def test_deliveries_that_waited_out_a_post_go_at_their_own_flush_interval_not_one_more(
    clock,
) -> None:
    # A trickle: one record flushed alone; another arrives while that batch is
    # being posted (1.5 s, a slow /track). It has waited longer than the flush
    # interval when the feed is free again: it goes at once, not a second later.
    harness = Harness(feeds=1)
    state = attach(harness, harness.connection, 1)
    (feed,) = harness.connection.feeds
    feed.deliver(1)
    harness.reader.step(state, stopping=False)
    clock.now += 1.0
    harness.reader.step(state, stopping=False)
    assert state.slots[0].busy
    feed.deliver(1)
    harness.reader.step(state, stopping=False)  # seen waiting behind the post
    clock.now += 1.5
    harness.release(b"a1")
    harness.settle_until(state, 1)
    harness.reader.step(state, stopping=False)
    assert state.slots[0].busy
    assert not feed.waiting


def test_a_refused_settle_returns_only_its_own_channels_deliveries(clock) -> None:
    harness = Harness(feeds=2)
    state = attach(harness, harness.connection, 1)
    refused, other = harness.connection.feeds
    refused.deliver(5)  # a batch out, two more held on the same channel
    other.deliver(5)
    harness.refuse.add(b"a1")
    harness.release(b"a1")
    harness.release(b"b1")
    harness.settle_until(state, 1)  # b's batch; a's was refused
    harness.step_until(state, lambda: harness.reader.out == 0, "the refused batch back")
    assert harness.connection.renewed == [0]  # channel a closed: its 5 deliveries go back
    assert harness.settled == [(1, 1, 3)]
    assert state.slots[0].feed is cast(object, harness.connection.feeds[0])
    assert not state.slots[0].busy
    assert list(m.tag for m in other.waiting) == [4, 5]  # b keeps what it holds
