"""What the demo needs of RabbitMQ, when records travel there (``amqp://``).

The Redis demo reads its counters from the stats hash and deletes its keys;
on RabbitMQ the same figures come from the figures and dead-letter streams
(:class:`~aicm_tasks.broker.rabbitmq.figures.RabbitFiguresReader`, the reader
``status`` uses), the worker is seen as a consumer of the demo's queue, and
cleaning up deletes the demo's own queue, exchanges and streams. The delay
levels are shared by every queue of a key prefix by design, so they stay.
"""

from __future__ import annotations

import logging

from aicm_tasks.broker.health import Thresholds
from aicm_tasks.broker.rabbitmq.confirms import ConfirmedPublishes
from aicm_tasks.broker.rabbitmq.connection import RABBIT_ERRORS, close_quietly, open_connection
from aicm_tasks.broker.rabbitmq.figures import RabbitFiguresReader, queue_counts
from aicm_tasks.broker.rabbitmq.names import RabbitNames
from aicm_tasks.broker.rabbitmq.topology import declare_topology

logger = logging.getLogger(__name__)

#: Every broker call of the demo is bounded by this, in seconds.
TIMEOUT_S = 10.0


class RabbitDemoBroker:
    """The demo's queue on RabbitMQ: declared, written to, counted, deleted."""

    def __init__(self, url: str, names: RabbitNames) -> None:
        self.url = url
        self.names = names
        declare_topology(url, names, timeout_s=TIMEOUT_S)
        self.connection = open_connection(url, timeout_s=TIMEOUT_S)
        self.reader = RabbitFiguresReader(url, names, window_s=60, timeout_s=TIMEOUT_S)

    def workers(self) -> int:
        """Consumers of the demo's record queue (each delivery thread is one)."""
        counts = queue_counts(self.connection, self.names.queue)
        return counts[1] if counts else 0

    def push(self, message: bytes) -> None:
        """Put one hand-made message on the record queue, confirmed."""
        publishes = ConfirmedPublishes(self.connection.channel())
        publishes.publish(message, routing_key=self.names.queue)
        refused = publishes.wait(TIMEOUT_S)
        publishes.channel.close()
        if refused:
            raise RuntimeError(f"RabbitMQ refused the demo's message to {self.names.queue}")

    def stats(self) -> dict[str, int]:
        """The workers' counters (``delivered``, ``dead_lettered:<reason>``), as the
        Redis stats hash holds them, summed from the figures stream."""
        return dict(self.reader.read(Thresholds(window_s=60)).totals)

    def close(self) -> None:
        """Delete the demo's queue, exchanges and streams; close the connections."""
        self.reader.close()
        try:
            channel = self.connection.channel()
            for queue in (
                self.names.queue,
                self.names.parked,
                self.names.dead_letters,
                self.names.figures,
                self.names.limits,
            ):
                channel.queue_delete(queue)
            for exchange in (self.names.records_exchange, self.names.parked):
                channel.exchange_delete(exchange)
        except RABBIT_ERRORS as exc:
            logger.warning("could not remove the demo's queues: %s", exc)
        finally:
            close_quietly(self.connection)
