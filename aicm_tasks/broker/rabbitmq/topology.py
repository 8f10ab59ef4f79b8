"""Declaring the RabbitMQ topology (:mod:`.names`): a worker's start-up job.

Declared by every worker when it starts, always with the same arguments; a
producer declares only the record queue, and only when its first publish found
it missing. Why at start-up and not lazily: on RabbitMQ 3.x a quorum queue
declared seconds before a single node crashes can come back without its Raft
member (``docs/design/rabbitmq.md``, "A 3.10 hazard").

The delay levels are kombu's native delayed delivery (the topology Celery's
own countdowns use) under our own prefix, declared through a kombu connection:
start-up only, so kombu's per-call cost does not matter here.
"""

from __future__ import annotations

import math
from typing import Any

import amqp
from kombu import Connection, Exchange, Queue
from kombu.transport import native_delayed_delivery

from aicm_tasks.broker.rabbitmq.names import (
    BILLING_QUEUE_ARGUMENTS,
    RabbitNames,
    stream_arguments,
)

#: How long dead-letter events are kept. Retention drops whole segments, so an
#: event lives at least this long; live entries are re-appended before it ends.
DEAD_LETTERS_MAX_AGE = "90D"
#: Figures and limits are re-appended often; a day of history is plenty.
FIGURES_MAX_AGE = "1D"


def declare_record_queue(
    channel: amqp.Channel, names: RabbitNames, max_length: int | None = None
) -> int:
    """Declare the record queue (durable quorum, :meth:`RabbitNames.record_queue_arguments`);
    returns its ready count. Also what a producer runs when its queue is missing."""
    ok = channel.queue_declare(
        names.queue,
        durable=True,
        auto_delete=False,
        arguments=names.record_queue_arguments(max_length),
    )
    return int(ok[1]) if ok is not None else 0


def declare_topology(
    url: str,
    names: RabbitNames,
    *,
    timeout_s: float = 10.0,
    max_length: int | None = None,
    dead_letters_max_age: str = DEAD_LETTERS_MAX_AGE,
) -> None:
    """Declare every queue, exchange, stream and binding of ``names`` on the broker at ``url``.

    Idempotent with the same arguments; raises ``PreconditionFailed`` (406) when
    a queue of the same name exists with other arguments (an old deployment's
    classic queue, say): that needs an operator, not a silent second queue.
    """
    with Connection(
        url, connect_timeout=timeout_s, transport_options={"confirm_publish": True}
    ) as conn:
        conn.ensure_connection(max_retries=1, timeout=max(1, math.ceil(timeout_s)))
        channel: Any = conn.channel()
        parked_exchange = Exchange(names.parked, type="fanout", durable=True)
        parked_exchange.bind(channel).declare()
        parked = Queue(
            names.parked,
            exchange=parked_exchange,
            durable=True,
            queue_arguments=dict(BILLING_QUEUE_ARGUMENTS),
        )
        parked.bind(channel).declare()

        records_exchange = Exchange(names.records_exchange, type="topic", durable=True)
        records_exchange.bind(channel).declare()
        record_queue = Queue(
            names.queue,
            exchange=records_exchange,
            routing_key=names.queue,
            durable=True,
            queue_arguments=names.record_queue_arguments(max_length),
        )
        record_queue.bind(channel).declare()

        for stream, max_age in (
            (names.dead_letters, dead_letters_max_age),
            (names.figures, FIGURES_MAX_AGE),
            (names.limits, FIGURES_MAX_AGE),
        ):
            Queue(stream, durable=True, queue_arguments=stream_arguments(max_age)).bind(
                channel
            ).declare()

        delays: Any = native_delayed_delivery  # kombu 5.7's prefix; the stubs predate it
        delays.declare_native_delayed_delivery_exchanges_and_queues(
            conn, "quorum", prefix=names.prefix
        )
        # Binds <prefix>_celery_delayed_delivery -> <queue>.records with "#.<queue>"
        # and the queue to its exchange with the same key.
        delays.bind_queue_to_native_delayed_delivery_exchange(
            conn, record_queue, prefix=names.prefix
        )
