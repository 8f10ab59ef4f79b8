"""One thread reads a worker's RabbitMQ connection; a pool of threads posts its batches.

Why one reader: py-amqp reads a delivery (three frames) in about ten small
``recv`` calls, each releasing the interpreter lock. When every delivery
thread owned a connection (the first design), four threads handed the lock
back and forth at every read and drained half as fast as one: 13.8k msgs/s
against 25.9k for one thread on a bare consumer, and the worker 8.3k records/s
(``docs/design/rabbitmq.md``, "One reading thread"). So all socket work of the
record queue happens here, on one thread and one connection reading ahead:
deliveries, publishes of retries and dead letters, their confirms, and acks.
The posting threads only decode, POST and plan (:func:`~.batches.process`),
which needs no broker.

The connection has one channel (a :class:`~aicm_tasks.broker.rabbitmq.consumer.ChannelFeed`)
per posting thread, because a ``basic_ack(multiple=True)`` acknowledges every
earlier delivery of its channel: one batch in flight per channel keeps each
ack to its own batch, so a slow POST holds back only its own channel's
deliveries (its prefetch), never another batch's ack.

A batch's fate is written before its ack, on the reader, exactly as before
(:meth:`ChannelFeed.settle`). Any broker failure closes the connection: every
unacknowledged delivery returns to the queue, the batches still being posted
included (their results are dropped when they come back: a *generation*
number tells them from the new connection's), so nothing is acked that was not
settled.
"""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from aicm_tasks.broker.rabbitmq.consumer import Batch, ChannelFeed, FeedConnection
from aicm_tasks.errors import SettleError
from aicm_tasks.worker.batches import Processed

logger = logging.getLogger(__name__)

#: Longest socket wait of the reader while a batch is being posted or filling,
#: in seconds: a posted batch is settled (its ack sent) at most this long after
#: its POST returns, and a filling one flushed at most this late. An empty wait
#: costs about 15 µs (a ``poll`` that times out), so about 1 % of a core while
#: posts are in flight and the socket is quiet.
POLL_S = 0.002


@dataclass(slots=True)
class Posted:
    """A batch handed to a posting thread, and what came of it."""

    feed: int
    generation: int
    batch: Batch
    started: float
    done: Processed | None = None


@dataclass(slots=True)
class _Slot:
    """A feed, whether its batch is out being posted, and when its waiting
    deliveries must go even if fewer than a batch."""

    feed: ChannelFeed
    busy: bool = False
    flush_at: float | None = None


@dataclass(slots=True)
class ReaderState:
    """What the reader holds while one connection lasts."""

    connection: FeedConnection
    generation: int
    slots: list[_Slot] = field(default_factory=list)
    #: When a delivery was last waiting or a batch last out (the idle note's clock).
    last_busy: float = 0.0

    @property
    def busy(self) -> int:
        return sum(slot.busy for slot in self.slots)


class FeedReader:
    """The reading loop of one connection's feeds, and the pool posting their batches.

    ``process`` turns a batch's bodies into its fate (in a posting thread);
    ``settled`` is told of each settled batch (in the reader, after its ack);
    ``idle`` is called when the queue has been empty for ``idle_after_s``.
    """

    def __init__(
        self,
        *,
        batch_size: int,
        flush_interval_s: float,
        concurrency: int,
        process: Callable[[Batch], Processed],
        settle: Callable[[ChannelFeed, Batch, Processed], None],
        settled: Callable[[int, Posted], None],
        idle: Callable[[ChannelFeed], None],
        idle_after_s: float,
    ) -> None:
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self.concurrency = concurrency
        self._process = process
        self._settle = settle
        self._settled = settled
        self._idle = idle
        self.idle_after_s = idle_after_s
        self._done: queue.SimpleQueue[Posted] = queue.SimpleQueue()
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="aicm-post")
        #: Posted batches not back yet, of any generation (a stale one still
        #: holds a posting thread).
        self._out = 0
        #: The generation of the connection being read, None between connections.
        #: Posting threads read it (one int, no lock needed) to skip a batch that
        #: went stale while queued for a thread.
        self._live: int | None = None

    def attach(self, connection: FeedConnection, generation: int) -> ReaderState:
        """Start reading ``connection`` (after a connect or a reconnect)."""
        self._live = generation
        return ReaderState(
            connection,
            generation,
            [_Slot(feed) for feed in connection.feeds],
            last_busy=time.monotonic(),
        )

    def detach(self) -> None:
        """The connection is being closed: batches of it not yet begun by a
        posting thread are dropped unposted when their turn comes."""
        self._live = None

    def step(self, state: ReaderState, *, stopping: bool) -> None:
        """One turn: settle what came back, hand out what is due, then read or wait.

        Raises what the broker raises (the caller closes the connection and
        reconnects); a posted batch of this connection then comes back stale.
        """
        self._take_back(state, block_s=0.0)
        now = time.monotonic()
        if not stopping:
            self._hand_out(state, now)
        if state.busy or any(slot.feed.waiting for slot in state.slots):
            state.last_busy = now
        elif not stopping and now - state.last_busy >= self.idle_after_s:
            state.connection.for_writes()
            self._idle(state.slots[0].feed)
            state.last_busy = now
        if stopping:
            # Nothing new goes out; wait for what is out (its posts end within
            # the HTTP timeout), then the caller closes the connection.
            self._take_back(state, block_s=POLL_S * 10)
            return
        if self._all_full(state):
            # Every feed has a batch out and the next one waiting: reading on
            # would only wait for deliveries RabbitMQ holds back (prefetch).
            self._take_back(state, block_s=1.0)
            return
        state.connection.read(self._read_timeout_s(state))

    def _hand_out(self, state: ReaderState, now: float) -> None:
        """Give each free feed's waiting deliveries to a posting thread when a
        whole batch waits or its flush interval is up.

        The flush interval runs from when deliveries were first seen waiting,
        also behind a batch being posted: those then go as soon as the feed is
        free if they have waited it out, not one interval after the settle."""
        for index, slot in enumerate(state.slots):
            waiting = len(slot.feed.waiting)
            if not waiting:
                slot.flush_at = None
                continue
            if slot.flush_at is None:
                slot.flush_at = now + self.flush_interval_s
            if slot.busy:
                continue
            if waiting >= self.batch_size or now >= slot.flush_at:
                posted = Posted(index, state.generation, slot.feed.cut(self.batch_size), now)
                slot.busy, slot.flush_at = True, None
                self._out += 1
                self._pool.submit(self._post, posted)

    def _post(self, posted: Posted) -> None:
        """In a posting thread: send and plan the batch, then give it back (without
        a result if processing raised, which :func:`~.batches.process` never should:
        the reader then drops the connection and RabbitMQ returns the batch).

        A batch whose connection was lost while it waited for a thread is not
        posted: RabbitMQ has returned its records (to this worker's next
        connection or another worker), so posting it would send duplicates and
        hold a thread, for up to the HTTP timeout, from a live batch. Only the
        posts already begun when the connection went stay stale duplicates."""
        if posted.generation != self._live:
            self._done.put(posted)
            return
        try:
            posted.done = self._process(posted.batch)
        except BaseException:
            logger.exception("a posting thread failed on a batch of %d", len(posted.batch))
            raise
        finally:
            self._done.put(posted)

    def _take_back(self, state: ReaderState, *, block_s: float) -> None:
        """Settle every batch that came back (waiting up to ``block_s`` for the first)."""
        while True:
            try:
                posted = self._done.get(timeout=block_s) if block_s else self._done.get_nowait()
            except queue.Empty:
                return
            block_s = 0.0
            self._out -= 1
            if posted.generation != state.generation:
                # Its connection is closed: RabbitMQ has already returned its records.
                continue
            slot = state.slots[posted.feed]
            slot.busy = False
            if posted.done is None:  # the posting thread died: hand the batch back
                raise RuntimeError("a posting thread ended without a result")
            state.connection.for_writes()
            try:
                self._settle(slot.feed, posted.batch, posted.done)
            except SettleError as exc:
                # The broker refused a retry or a dead letter (a nack, a return):
                # the channel still works, so only its own deliveries go back.
                # Closing the whole connection would return every channel's,
                # posted again and counted towards x-delivery-limit with it.
                logger.warning(
                    "%s; channel %d is reopened, its held deliveries go back to the queue "
                    "(the other channels keep theirs)",
                    exc,
                    posted.feed,
                )
                slot.feed, slot.flush_at = state.connection.renew(posted.feed), None
                continue
            self._settled(posted.feed, posted)

    def _all_full(self, state: ReaderState) -> bool:
        return all(slot.busy and len(slot.feed.waiting) >= self.batch_size for slot in state.slots)

    def _read_timeout_s(self, state: ReaderState) -> float:
        """How long the next read may wait: briefly while a batch is out or one is
        filling (to settle or flush it soon), else until the idle check. Two values
        only, so the socket's timeout rarely changes (:class:`FeedConnection`)."""
        if state.busy or any(slot.flush_at is not None for slot in state.slots):
            return POLL_S
        return self.idle_after_s

    @property
    def out(self) -> int:
        """Batches being posted, any generation."""
        return self._out

    def shutdown(self) -> None:
        """Stop the posting pool (without waiting for a stale post)."""
        self._pool.shutdown(wait=False, cancel_futures=True)
