"""Taking records from RabbitMQ in batches, and settling each batch with one multiple ack.

A :class:`ChannelFeed` is one channel of a connection: one consumer with manual
acks and a per-consumer prefetch of about two batches (``basic_qos(a_global=False)``:
quorum queues refuse a global one), so the next batch is already in the client
while one is posted. A ``basic_ack(tag, multiple=True)`` settles every earlier
delivery of its channel, so a feed holds one batch at a time: a contiguous run
of tags, taken and settled in order.

A worker reads every feed through one :class:`FeedConnection` from one thread
(py-amqp is not thread-safe, and one socket read by one thread is what makes
it fast: ``docs/design/rabbitmq.md``, "One reading thread"); the parked-record
drain and the tests use a :class:`BatchConsumer`, a connection with one feed
that waits for its own batches.

:meth:`ChannelFeed.settle` writes a batch's fate before the ack, in this order
(``docs/design/rabbitmq.md``, "Consume and settle path"):

1. each retry as a *new* persistent message (no broker header copied: no
   ``x-death`` history, so no dead-letter cycle) to the delay topology's entry
   with the routing key of its delay in whole seconds (at least one: a retry
   due now still takes the 1 s hop), and each dead letter as a ``dead`` event
   on the dead-letter stream, all confirmed by one wait;
2. the batch's figures on the figures stream, not waited for (a lost one is
   a wrong rate, never a lost record);
3. one ``basic_ack(last_tag, multiple=True)``.

Any failure before the ack (a nack, a return, a late confirm, a lost
connection) raises; the caller closes the connection and RabbitMQ returns the
whole batch to the queue: the delivered records of that batch are posted
again (duplicates of an idempotent ``response_id``, never a loss).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import amqp

from aicm_tasks.broker.keys import IDLE_AT
from aicm_tasks.broker.rabbitmq.confirms import ConfirmedPublishes
from aicm_tasks.broker.rabbitmq.connection import close_quietly, open_connection, read_ahead
from aicm_tasks.broker.rabbitmq.events import dead_event, figures_event
from aicm_tasks.broker.rabbitmq.names import RabbitNames
from aicm_tasks.broker.resolution import Resolution
from aicm_tasks.errors import SettleError

#: Longest confirm wait of one settle, in seconds: a quorum queue confirms in
#: about a millisecond here; far longer means the broker is in trouble, and the
#: batch is better handed back than held.
SETTLE_TIMEOUT_S = 30.0
#: Most methods one :meth:`FeedConnection.read` takes from the read-ahead buffer
#: before the reader looks at its batches again (settles, flushes): 64
#: deliveries are about 1.5 ms of reading; one look per delivery cost the
#: reader about 10 % of its time (profiled).
READ_MOST = 64


@dataclass(slots=True)
class Batch:
    """Deliveries taken together: their bodies, headers (when kept), and the last one's tag."""

    bodies: list[bytes] = field(default_factory=list)
    headers: list[dict[str, Any]] = field(default_factory=list)
    #: The delivery tag the batch's one ``basic_ack(multiple=True)`` names.
    last_tag: int = 0

    def __len__(self) -> int:
        return len(self.bodies)


class ChannelFeed:
    """One channel of ``connection``: a consumer of ``queue`` (default: the record
    queue) whose deliveries wait in :attr:`waiting` until :meth:`cut` into a batch.

    ``prefetch``: deliveries RabbitMQ sends this channel ahead of its acks (at
    least the batch size). Reading the connection is the caller's: the
    deliveries arrive while it drains events.
    """

    def __init__(
        self,
        connection: amqp.Connection,
        names: RabbitNames,
        *,
        prefetch: int,
        queue: str | None = None,
        keep_headers: bool = False,
    ) -> None:
        self.names = names
        self.queue = queue or names.queue
        #: Whether batches carry each delivery's headers (the parked drain reads
        #: them; the record queue's hot loop skips the copy).
        self.keep_headers = keep_headers
        #: Deliveries read and not yet cut into a batch, in tag order.
        self.waiting: deque[amqp.Message] = deque()
        self.channel = connection.channel()
        self.channel.basic_qos(prefetch_size=0, prefetch_count=prefetch, a_global=False)
        self.publishes = ConfirmedPublishes(self.channel)
        self.channel.basic_consume(self.queue, callback=self.waiting.append, no_ack=False)

    def cut(self, batch_size: int) -> Batch:
        """The first ``batch_size`` waiting deliveries (or all of them) as a batch."""
        batch = Batch()
        waiting = self.waiting
        for _ in range(min(batch_size, len(waiting))):
            message = waiting.popleft()
            body = message.body
            batch.bodies.append(body if isinstance(body, bytes) else str(body).encode())
            if self.keep_headers:
                batch.headers.append(dict(message.properties.get("application_headers") or {}))
            batch.last_tag = int(message.delivery_info["delivery_tag"])
        return batch

    def settle(
        self,
        batch: Batch,
        resolution: Resolution,
        *,
        consumer: str,
        name: str = "",
        timeout_s: float = SETTLE_TIMEOUT_S,
    ) -> None:
        """Write ``resolution`` (retries, dead letters, figures), then ack ``batch``.

        Raises :class:`SettleError` when the broker refused a retry or a dead
        letter, ``TimeoutError`` when their confirms are late, or a connection
        error: the batch is then not acknowledged (close the connection and
        RabbitMQ delivers it again).
        """
        names = self.names
        # This batch's own tags: a figures event or idle note refused earlier on
        # the channel (never waited for) is in ``wait``'s answer too, and must not
        # send this batch, and every channel's deliveries with it, back.
        fate: set[int] = set()
        for delay_s, message in resolution.retries:
            fate.add(
                self.publishes.publish(
                    message,
                    exchange=names.delay_entry,
                    routing_key=names.delay_routing_key(delay_s),
                )
            )
        now = time.time()
        for dead_letter_id, entry_json in resolution.dead_letters:
            fate.add(
                self.publishes.publish(
                    dead_event(dead_letter_id, entry_json, now), routing_key=names.dead_letters
                )
            )
        if fate:
            refused = self.publishes.wait(timeout_s) & fate
            if refused:
                raise SettleError(
                    f"RabbitMQ refused {len(refused)} of a batch's {len(resolution.retries)} "
                    f"retries and {len(resolution.dead_letters)} dead letters; the batch of "
                    f"{len(batch)} goes back to {self.queue} unacknowledged"
                )
        if resolution.stats or resolution.rates:
            self.publishes.publish(
                figures_event(consumer, name, resolution, now), routing_key=names.figures
            )
        if batch.last_tag:
            self.channel.basic_ack(batch.last_tag, multiple=True)

    def note_idle(self, *, consumer: str, name: str = "") -> None:
        """Tell ``status`` this worker found the record queue empty just now: a
        figures event marking ``idle_at`` (what RESOLVE's ``noted`` does on Redis),
        not waited for. Without it, records arriving after a quiet spell longer
        than the health window would read as a stall until the first batch settles."""
        self.publishes.publish(
            figures_event(consumer, name, Resolution(noted=(IDLE_AT,)), time.time()),
            routing_key=self.names.figures,
        )

    def depth(self) -> dict[str, int]:
        """Records ready in the record queue (``queued``), in the delay levels
        (``scheduled``) and parked, by passive declares (ready messages only:
        RabbitMQ counts unacknowledged ones apart). 30 round trips, a few ms."""
        names = self.names
        scheduled = sum(self._ready(level) for level in names.delay_levels())
        return {
            "queued": self._ready(names.queue),
            "scheduled": scheduled,
            "parked": self._ready(names.parked),
        }

    def _ready(self, queue: str) -> int:
        ok = self.channel.queue_declare(queue, passive=True)
        return int(ok[1]) if ok is not None else 0


class FeedConnection:
    """One connection reading ahead, with ``feeds`` channels consuming the record queue.

    RabbitMQ spreads the queue's deliveries over the feeds (round robin, each
    up to its prefetch); :meth:`read` takes what arrived on any of them. Raises
    one of :data:`~.connection.RABBIT_ERRORS` when the broker cannot be reached.

    The socket's timeout is set here, only when it changes, not by py-amqp:
    ``drain_events(timeout=t)`` sets ``t`` and restores the old timeout around
    every frame, and CPython's ``settimeout`` is an ``ioctl`` that releases the
    interpreter lock, twice a frame, six times a delivery: 2.5 µs each and, with
    posting threads running, a wait for the lock after each (profiled: 282k
    ``settimeout`` calls for 50k deliveries, the largest own time of the reader).
    """

    def __init__(
        self, url: str, names: RabbitNames, *, feeds: int, prefetch: int, timeout_s: float
    ) -> None:
        self.timeout_s = timeout_s
        self.names = names
        self.prefetch = prefetch
        self.connection = open_connection(url, timeout_s=timeout_s)
        # What the socket really has: py-amqp leaves it blocking (None) after
        # connecting and bounds reads and writes with SO_RCVTIMEO/SO_SNDTIMEO
        # instead, so assuming ``timeout_s`` here made the first for_writes() a
        # no-op. Later changes behind our back (ConfirmedPublishes.wait's
        # drain_events(timeout=...)) restore the value they found, so this
        # record stays true.
        self._socket_timeout: float | None = self.connection.transport.sock.gettimeout()
        try:
            read_ahead(self.connection)
            self.feeds = [
                ChannelFeed(self.connection, names, prefetch=prefetch) for _ in range(feeds)
            ]
        except BaseException:
            close_quietly(self.connection)
            raise

    def read(self, timeout_s: float, most: int = READ_MOST) -> None:
        """Read what the broker sent (deliveries, confirms): waits up to ``timeout_s``
        for the first method (a delivery, an ack), then takes up to ``most`` in all
        while the read-ahead buffer holds more."""
        self._timeout(timeout_s)
        connection = self.connection
        transport = connection.transport
        try:
            # None: py-amqp reads with the socket's timeout and leaves it alone.
            connection.drain_events(timeout=None)
            for _ in range(most - 1):
                if not getattr(transport, "_read_buffer", b""):
                    return
                connection.drain_events(timeout=None)
        except TimeoutError:  # nothing (more) arrived (socket.timeout is TimeoutError)
            return

    def renew(self, index: int) -> ChannelFeed:
        """Close feed ``index``'s channel (RabbitMQ returns the deliveries it held,
        and only those) and consume on a new one in its place."""
        old = self.feeds[index]
        old.waiting.clear()
        old.channel.close()
        self.feeds[index] = ChannelFeed(self.connection, self.names, prefetch=self.prefetch)
        return self.feeds[index]

    def for_writes(self) -> None:
        """Give the socket its full timeout back before writing (a settle, an ack):
        a short read timeout would cut a write the broker is slow to take."""
        self._timeout(self.timeout_s)

    def _timeout(self, timeout_s: float) -> None:
        if timeout_s != self._socket_timeout:
            self.connection.transport.sock.settimeout(timeout_s)
            self._socket_timeout = timeout_s

    def close(self) -> None:
        """Close the connection: RabbitMQ returns every unacknowledged delivery."""
        for feed in self.feeds:
            feed.waiting.clear()
        close_quietly(self.connection)


class BatchConsumer:
    """One connection with one :class:`ChannelFeed`, waiting for its own batches.

    ``prefetch``: deliveries RabbitMQ sends ahead of the acks (at least the
    batch size). Raises one of :data:`~.connection.RABBIT_ERRORS` when the
    broker cannot be reached.
    """

    def __init__(
        self,
        url: str,
        names: RabbitNames,
        *,
        prefetch: int,
        timeout_s: float,
        queue: str | None = None,
        keep_headers: bool = False,
    ) -> None:
        self.connection = open_connection(url, timeout_s=timeout_s)
        try:
            self.feed = ChannelFeed(
                self.connection, names, prefetch=prefetch, queue=queue, keep_headers=keep_headers
            )
        except BaseException:
            close_quietly(self.connection)
            raise
        self.settle = self.feed.settle
        self.note_idle = self.feed.note_idle
        self.depth = self.feed.depth

    def take(
        self,
        batch_size: int,
        *,
        flush_interval_s: float,
        wait_s: float,
        stop: threading.Event | None = None,
    ) -> Batch:
        """Up to ``batch_size`` deliveries: at once from what is prefetched, or what
        arrives within ``flush_interval_s`` of the first; empty when none came in
        ``wait_s``. Stops filling early when ``stop`` is set."""
        # Each read handles one frame, which may be a confirm, not a delivery.
        waiting = self.feed.waiting
        wait_until = time.monotonic() + wait_s
        while not waiting:
            left_s = wait_until - time.monotonic()
            if left_s <= 0 or (stop is not None and stop.is_set()):
                return Batch()
            drain(self.connection, left_s)
        flush_at = time.monotonic() + flush_interval_s
        while len(waiting) < batch_size and not (stop is not None and stop.is_set()):
            left_s = flush_at - time.monotonic()
            if left_s <= 0:
                break
            drain(self.connection, left_s)
        return self.feed.cut(batch_size)

    def close(self) -> None:
        """Close the connection: RabbitMQ returns every unacknowledged delivery."""
        self.feed.waiting.clear()
        close_quietly(self.connection)


def drain(connection: amqp.Connection, timeout_s: float) -> None:
    """Read what the broker sent within ``timeout_s`` (deliveries, confirms)."""
    try:
        connection.drain_events(timeout=max(timeout_s, 0.001))
    except TimeoutError:  # nothing arrived: not an error (socket.timeout is TimeoutError)
        return


def delivery_count(headers: dict[str, Any]) -> int | None:
    """How many times a quorum queue returned the message (``x-delivery-count``), if known."""
    count = headers.get("x-delivery-count")
    return int(count) if isinstance(count, int) else None
