"""Reading a RabbitMQ stream to its end, over AMQP 0-9-1.

A stream is read by a consumer with a prefetch and manual acks (RabbitMQ
refuses ``basic.get`` and auto-ack on a stream, and a consumer without
``basic.qos``), attached where ``x-stream-offset`` says (``first``, an offset,
an interval such as ``10m``). Reading removes nothing.

**Knowing the end.** A stream has no depth over AMQP (a passive declare answers
0 whatever it holds), and a consumer is never told it has caught up: it just
stops receiving. Stopping after a short idle wait would be a guess: on a loaded
broker the next chunk may take longer than any wait we pick (a guess too short
lists fewer dead letters than there are, and ``replay --all`` would miss some),
and every read would cost the whole wait. So :func:`read_to_end` first
*appends a mark*, a small event with a random nonce, waits for its confirm,
then reads until it meets that mark: everything appended before the confirm
lies before the mark (a stream is one ordered log), so meeting it means every
event confirmed before the read began has been read. Cost: one confirmed
publish (about 0.6 ms here) and about 100 bytes kept until the stream's
retention drops their segment; the folds skip marks (an event of a kind they
do not know). Readers that refresh often (``monitor``) append one mark when
they start and then take what arrives (:meth:`StreamReader.poll`), so a live
view does not grow the log every second. Appending needs write permission on
the stream; the operator commands have it (``replay`` and ``purge`` write
anyway).
"""

from __future__ import annotations

import json
import time
import uuid
from collections import deque
from collections.abc import Iterator
from typing import Any

import amqp

from aicm_tasks.broker.rabbitmq.confirms import ConfirmedPublishes

#: The event kind of a read's end mark (skipped by every fold).
MARK = "mark"
#: Deliveries the broker may send ahead of our acks: stream credit, not memory
#: (each message is folded and dropped as it arrives). Acked in halves.
PREFETCH = 1000
#: A read that receives nothing for this long, its mark not met, has stalled.
DEFAULT_READ_TIMEOUT_S = 30.0


def mark_event(nonce: str, at: float) -> bytes:
    """The end mark :func:`read_to_end` appends and stops at."""
    return json.dumps({"event": MARK, "nonce": nonce, "at": at}, separators=(",", ":")).encode()


def stream_exists(connection: amqp.Connection, stream: str) -> bool:
    """Whether ``stream`` is declared (passive declare; a 404 closes only its own channel)."""
    channel = connection.channel()
    try:
        channel.queue_declare(stream, passive=True)
    except amqp.exceptions.NotFound:
        return False
    channel.close()
    return True


def offset_of(message: amqp.Message) -> int | None:
    """The stream offset RabbitMQ stamped on a delivered message (``x-stream-offset``)."""
    headers = message.properties.get("application_headers") or {}
    offset = headers.get("x-stream-offset")
    return int(offset) if offset is not None else None


class StreamReader:
    """A consumer on one stream: :meth:`to_end` reads up to a fresh mark, :meth:`poll`
    takes what has arrived since. Yields ``(offset, event)`` with each event a dict
    (messages that are not JSON objects are skipped). Not thread-safe (py-amqp)."""

    def __init__(
        self,
        connection: amqp.Connection,
        stream: str,
        offset: int | str = "first",
        *,
        timeout_s: float = DEFAULT_READ_TIMEOUT_S,
    ) -> None:
        self.connection = connection
        self.stream = stream
        self.timeout_s = timeout_s
        self._received: deque[amqp.Message] = deque()
        self._unacked = 0
        self._marks: ConfirmedPublishes | None = None
        self.channel = connection.channel()
        self.channel.basic_qos(prefetch_size=0, prefetch_count=PREFETCH, a_global=False)
        self.consumer_tag = self.channel.basic_consume(
            stream,
            callback=self._received.append,
            no_ack=False,
            arguments={"x-stream-offset": offset},
        )

    def to_end(self) -> Iterator[tuple[int | None, dict[str, Any]]]:
        """Every event up to a mark appended now (see the module docstring)."""
        nonce = uuid.uuid4().hex
        if self._marks is None:
            self._marks = ConfirmedPublishes(self.connection.channel())
        self._marks.publish(mark_event(nonce, round(time.time(), 3)), routing_key=self.stream)
        if self._marks.wait(self.timeout_s):
            raise amqp.exceptions.NotFound(f"the stream {self.stream} refused the read's mark")
        while True:
            if not self._received:
                # Raises socket.timeout (a TimeoutError) when the broker sends nothing.
                self.connection.drain_events(timeout=self.timeout_s)
            for offset, event in self._take():
                if event.get("event") == MARK and event.get("nonce") == nonce:
                    return
                yield offset, event

    def poll(self, wait_s: float = 0.05) -> Iterator[tuple[int | None, dict[str, Any]]]:
        """The events that have arrived, waiting at most ``wait_s`` for each next one."""
        while True:
            if not self._received:
                try:
                    self.connection.drain_events(timeout=wait_s)
                except TimeoutError:
                    return
            yield from self._take()

    def until(self, last_offset: int) -> Iterator[tuple[int, dict[str, Any]]]:
        """Events up to and including ``last_offset`` (known to be in the stream)."""
        while True:
            if not self._received:
                self.connection.drain_events(timeout=self.timeout_s)
            for offset, event in self._take():
                if offset is None:
                    continue
                yield offset, event
                if offset >= last_offset:
                    return

    def _take(self) -> Iterator[tuple[int | None, dict[str, Any]]]:
        while self._received:
            message = self._received.popleft()
            self._unacked += 1
            if self._unacked >= PREFETCH // 2:
                # Stream credit: the broker sends more only as deliveries are acked.
                self.channel.basic_ack(int(message.delivery_tag or 0), multiple=True)
                self._unacked = 0
            try:
                event = json.loads(message.body)
            except (ValueError, UnicodeDecodeError):
                continue
            if isinstance(event, dict):
                yield offset_of(message), event

    def close(self) -> None:
        """Cancel the consumer and close its channel (nothing in the stream changes).

        Cancelled first: deliveries still on their way are then taken before the
        cancel's answer, instead of reaching a closing channel (which py-amqp logs
        as a warning per delivery)."""
        if self.channel.is_open:
            self.channel.basic_cancel(self.consumer_tag)
            self._received.clear()
            self.channel.close()
