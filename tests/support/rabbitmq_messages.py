"""Queues, confirmed publishes and streams over py-amqp (the client of kombu's ``amqp://``).

Declare a durable quorum queue with a billing queue's arguments, publish
persistent messages with publisher confirms (one at a time, or a list with one
wait: :class:`ConfirmedBatch`), read a queue's depth by passive declare, and
declare and read a stream from an offset.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from typing import Any

import amqp

from aicm_tasks.broker.rabbitmq.confirms import ConfirmedPublishes
from aicm_tasks.broker.rabbitmq.connection import close_quietly, open_connection

#: The arguments a billing queue is declared with (docs/design/rabbitmq.md,
#: "Topology"): quorum (Raft-replicated, always durable and persistent); over-limit
#: redeliveries and rejections dead-letter at-least-once, which RabbitMQ only
#: honours with ``reject-publish`` overflow (a full queue nacks the publisher
#: instead of dropping the head). The dead-letter exchange is added per queue.
BILLING_QUEUE_ARGUMENTS: dict[str, Any] = {
    "x-queue-type": "quorum",
    "x-overflow": "reject-publish",
    "x-dead-letter-strategy": "at-least-once",
}


def declare_quorum_queue(
    channel: amqp.Channel, name: str, arguments: Mapping[str, Any] | None = None
) -> int:
    """Declare ``name`` durable, quorum, with :data:`BILLING_QUEUE_ARGUMENTS` (+ ``arguments``).

    Returns the ready-message count. Re-declaring with other arguments fails
    with ``PreconditionFailed`` (406), so every declarer must use the same ones.
    """
    ok = channel.queue_declare(
        name,
        durable=True,
        auto_delete=False,
        arguments={**BILLING_QUEUE_ARGUMENTS, **(arguments or {})},
    )
    return _declare_ok(ok)[0]


def publish_confirmed(
    channel: amqp.Channel,
    queue: str,
    body: bytes | str | Mapping[str, Any],
    *,
    confirm_timeout_s: float = 10.0,
    headers: Mapping[str, Any] | None = None,
) -> None:
    """Publish one persistent message to ``queue`` and wait for the broker's confirm.

    ``channel`` must come from a connection opened with ``confirm_publish=True``
    (py-amqp then waits for ``basic.ack`` after each publish; ``basic.nack``
    raises ``amqp.exceptions.MessageNacked``, no answer in time raises
    ``socket.timeout``). ``mandatory`` makes an unroutable message come back
    instead of vanishing (a missing queue is then an error, not a silent drop).
    """
    if isinstance(body, Mapping):
        body = json.dumps(body)
    message = amqp.basic_message.Message(
        body,
        delivery_mode=2,
        content_type="application/json",
        application_headers=dict(headers or {}),
    )
    channel.basic_publish(
        message, exchange="", routing_key=queue, mandatory=True, confirm_timeout=confirm_timeout_s
    )


def publish_all(url: str, routing_key: str, bodies: Iterable[bytes], timeout_s: float = 30) -> None:
    """Publish ``bodies`` to ``routing_key`` on the default exchange over a connection
    of their own, confirmed by one wait; fails if the broker refused any."""
    connection = open_connection(url, timeout_s=10)
    try:
        publishes = ConfirmedPublishes(connection.channel())
        for body in bodies:
            publishes.publish(body, routing_key=routing_key)
        assert publishes.wait(timeout_s) == set()
    finally:
        close_quietly(connection)


def declare_stream(channel: amqp.Channel, name: str, max_age: str = "7D") -> None:
    """Declare ``name`` as a durable stream (an append-only log) kept ``max_age`` (``7D``, ``1h``)."""
    channel.queue_declare(
        name,
        durable=True,
        auto_delete=False,
        arguments={"x-queue-type": "stream", "x-max-age": max_age},
    )


def read_stream(
    connection: amqp.Connection, name: str, offset: int | str, count: int, timeout_s: float = 10.0
) -> list[amqp.Message]:
    """``count`` messages of stream ``name`` from ``offset`` (a number, ``first``, ``1h``...).

    A stream is read by a consumer with a prefetch and manual acks (RabbitMQ
    refuses ``basic.get``, auto-ack and a consumer without ``basic.qos``);
    reading removes nothing. Each message carries its offset in the
    ``x-stream-offset`` header.
    """
    channel = connection.channel()
    received: list[amqp.Message] = []
    try:
        channel.basic_qos(prefetch_size=0, prefetch_count=max(count, 1), a_global=False)
        channel.basic_consume(
            name, callback=received.append, no_ack=False, arguments={"x-stream-offset": offset}
        )
        while len(received) < count:
            connection.drain_events(timeout=timeout_s)
        if received:
            channel.basic_ack(delivery_tag(received[-1]), multiple=True)
    finally:
        channel.close()
    return received[:count]


class ConfirmedBatch:
    """Publish many messages on one channel in confirm mode and wait once for all confirms.

    py-amqp's ``confirm_publish`` waits after every message (one round trip
    each); here confirm mode is selected by hand, every message is published,
    and the broker's ``basic.ack``/``basic.nack`` (delivery tags 1, 2, ... per
    channel; ``multiple`` covers every tag up to its own) are counted from the
    channel's ``events`` while the connection drains. The channel's connection
    must not have ``confirm_publish`` set.
    """

    def __init__(self, channel: amqp.Channel) -> None:
        self.channel = channel
        self.next_tag = 1
        self.pending: set[int] = set()
        self.nacked: set[int] = set()
        channel.confirm_select()
        # py-amqp calls these on basic.ack/basic.nack (its stubs omit ``events``).
        events: Any = getattr(channel, "events")  # noqa: B009
        events["basic_ack"].add(self._on_ack)
        events["basic_nack"].add(self._on_nack)

    def _settle(self, tag: int, multiple: bool) -> set[int]:
        done = {t for t in self.pending if t <= tag} if multiple else {tag} & self.pending
        self.pending -= done
        return done

    def _on_ack(self, tag: int, multiple: bool) -> None:
        self._settle(tag, multiple)

    def _on_nack(self, tag: int, multiple: bool) -> None:
        self.nacked |= self._settle(tag, multiple)

    def publish(self, queue: str, body: bytes | str) -> int:
        """Publish one persistent message to ``queue``; returns its delivery tag."""
        message = amqp.basic_message.Message(body, delivery_mode=2, content_type="application/json")
        self.channel.basic_publish(message, exchange="", routing_key=queue, mandatory=True)
        tag = self.next_tag
        self.next_tag += 1
        self.pending.add(tag)
        return tag

    def wait(self, timeout_s: float) -> set[int]:
        """Wait until every published message is confirmed; returns the nacked tags.

        Raises ``TimeoutError`` (``socket.timeout`` is its alias) when confirms are
        still missing after ``timeout_s``.
        """
        deadline = time.monotonic() + timeout_s
        while self.pending:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{len(self.pending)} publishes unconfirmed")
            self.channel.connection.drain_events(timeout=left)
        nacked, self.nacked = self.nacked, set()
        return nacked


def queue_depth(channel: amqp.Channel, name: str) -> int:
    """Ready messages in ``name`` by passive declare (unacknowledged ones are not counted)."""
    return _declare_ok(channel.queue_declare(name, passive=True))[0]


def queue_counts(channel: amqp.Channel, name: str) -> tuple[int, int]:
    """``(ready messages, consumers)`` of ``name`` by passive declare."""
    return _declare_ok(channel.queue_declare(name, passive=True))


def _declare_ok(ok: tuple[str, int, int] | None) -> tuple[int, int]:
    """``(message_count, consumer_count)`` of a ``queue.declare-ok`` (None only with nowait)."""
    if ok is None:
        raise RuntimeError("queue_declare answered nothing (nowait)")
    _, messages, consumers = ok
    return int(messages), int(consumers)


def delivery_tag(message: amqp.Message) -> int:
    """The delivery tag of a consumed message (what ``basic_ack`` takes)."""
    tag = message.delivery_tag
    if tag is None:
        raise ValueError("the message was not delivered by a consumer (no delivery tag)")
    return int(tag)
