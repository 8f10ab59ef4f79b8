"""Every RabbitMQ name aicm-tasks uses, for one queue (``AICM_QUEUE``), and their arguments.

One place, so a reader sees the whole topology at once (``docs/design/rabbitmq.md``,
"Topology")::

    <queue>                          quorum queue: records waiting for a worker
    <queue>.records                  topic exchange -> <queue> (where delayed records come back)
    <prefix>_celery_delayed_{0..27}  kombu's native delayed delivery levels (retries, countdowns)
    <prefix>_celery_delayed_delivery topic exchange -> <queue>.records
    <queue>.parked                   fanout exchange + quorum queue: past the delivery limit
    <queue>.dead_letters             stream: the dead-letter store's events (folded by `dlq`)
    <queue>.figures                  stream: workers' counters and health (status, monitor)
    <queue>.limits                   stream: verified triggered limits

Arguments are fixed when a queue is declared: declaring it again with other
arguments fails with 406 PRECONDITION_FAILED, so every declarer takes them from
here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from kombu.transport import native_delayed_delivery

# kombu 5.7's names take a prefix; the celery-types stubs predate it.
_kombu_delays: Any = native_delayed_delivery

#: URL schemes that select the RabbitMQ transport.
AMQP_SCHEMES = ("amqp", "amqps")

#: Returns of one record (worker kills, closed connections) before RabbitMQ moves
#: it to the parked queue. Explicit because 4.0+ defaults to 20 and *drops* past
#: it without a dead-letter exchange; up to 4.2 every return counts, a SIGKILLed
#: worker's prefetched records included, so the limit is far above what restarts do.
DELIVERY_LIMIT = 50

#: Longest delay native delayed delivery can express: 28 binary levels of seconds.
MAX_DELAY_S = 2**28 - 1


def is_rabbitmq_url(url: str) -> bool:
    """Whether ``url`` selects the RabbitMQ transport (``amqp://``, ``amqps://``)."""
    return urlsplit(url).scheme in AMQP_SCHEMES


@dataclass(frozen=True, slots=True)
class RabbitNames:
    """The names of one deployment's topology, derived from its queue and key prefix."""

    queue: str = "aicm.tracking"
    prefix: str = "aicm"

    @property
    def records_exchange(self) -> str:
        """Topic exchange bound to :attr:`queue`; delayed records come back through it."""
        return f"{self.queue}.records"

    @property
    def parked(self) -> str:
        """Fanout exchange and quorum queue of the same name: records past the delivery limit."""
        return f"{self.queue}.parked"

    @property
    def dead_letters(self) -> str:
        """Stream of dead-letter events (:mod:`.events`)."""
        return f"{self.queue}.dead_letters"

    @property
    def figures(self) -> str:
        """Stream of workers' figures (:mod:`.events`)."""
        return f"{self.queue}.figures"

    @property
    def limits(self) -> str:
        """Stream of verified triggered-limits sets."""
        return f"{self.queue}.limits"

    @property
    def delay_entry(self) -> str:
        """Where a delayed record is published: the top level of the delay topology."""
        return str(_kombu_delays.level_name(27, self.prefix))

    def delay_levels(self) -> list[str]:
        """Every level's exchange and queue name, 27 down to 0."""
        return [str(_kombu_delays.level_name(level, self.prefix)) for level in range(27, -1, -1)]

    def delay_routing_key(self, delay_s: float) -> str:
        """The routing key that makes the delay topology hold a record ``delay_s`` seconds.

        Whole seconds, at least 1 (a record due now still takes a one-second hop:
        publish it to :attr:`queue` instead when it is due), at most
        :data:`MAX_DELAY_S`.
        """
        seconds = min(MAX_DELAY_S, max(1, int(-(-delay_s // 1))))
        return str(_kombu_delays.calculate_routing_key(seconds, self.queue))

    def record_queue_arguments(self, max_length: int | None = None) -> dict[str, Any]:
        """The record queue's arguments: quorum, a full queue nacks the publisher
        (never drops its oldest record), past :data:`DELIVERY_LIMIT` returns a record
        is dead-lettered at-least-once to :attr:`parked` (which RabbitMQ honours only
        with ``reject-publish``)."""
        arguments: dict[str, Any] = {
            **BILLING_QUEUE_ARGUMENTS,
            "x-dead-letter-exchange": self.parked,
            "x-delivery-limit": DELIVERY_LIMIT,
        }
        if max_length is not None:
            arguments["x-max-length"] = max_length
        return arguments


#: Arguments every queue that holds records carries (docs/design/rabbitmq.md).
BILLING_QUEUE_ARGUMENTS: dict[str, Any] = {
    "x-queue-type": "quorum",
    "x-overflow": "reject-publish",
    "x-dead-letter-strategy": "at-least-once",
}


def stream_arguments(max_age: str) -> dict[str, Any]:
    """A stream's arguments: kept ``max_age`` (``90D``, ``1D``, ``1h``), by whole segments."""
    return {"x-queue-type": "stream", "x-max-age": max_age}
