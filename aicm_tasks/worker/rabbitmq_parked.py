"""Records RabbitMQ parked past their delivery limit, moved to the dead-letter stream.

A quorum queue returns a delivery whose consumer died without settling it;
past ``x-delivery-limit`` (:data:`~aicm_tasks.broker.rabbitmq.names.DELIVERY_LIMIT`)
it dead-letters the message to the parked queue instead, so one record that
kills every worker cannot cycle for ever. This drain reads that queue (nearly
always empty: it is looked at every few seconds), writes each record as a
``delivery_limit`` dead letter that ``aicm-tasks dlq replay`` can send again,
and meanwhile hands the queue depths to the observers (the metrics' gauges).
"""

from __future__ import annotations

import logging
import threading

from aicm_tasks.broker.rabbitmq.consumer import Batch, BatchConsumer, delivery_count
from aicm_tasks.broker.rabbitmq.names import DELIVERY_LIMIT, RabbitNames
from aicm_tasks.worker.batches import log_batch
from aicm_tasks.worker.delivery import plan_parked
from aicm_tasks.worker.observe import Observers
from aicm_tasks.worker.rabbitmq_loop import CONNECTION_TIMEOUT_S, consume_reconnecting

logger = logging.getLogger(__name__)

#: How often the parked queue is looked at (and the queue depths read for the
#: observers), in seconds; it fills only when a record was returned
#: DELIVERY_LIMIT times, so it is nearly always empty.
PARKED_EVERY_S = 5.0
#: Most parked records moved to the dead-letter stream per settle.
PARKED_BATCH = 100


class ParkedDrain:
    """The parked queue's consumer: one connection of its own, one thread."""

    def __init__(
        self,
        url: str,
        names: RabbitNames,
        observers: Observers,
        *,
        consumer: str,
        name: str,
        every_s: float = PARKED_EVERY_S,
        auth_retry_interval_s: float,
    ) -> None:
        self.url = url
        self.names = names
        self.observers = observers
        self.consumer = consumer
        self.name = name
        self.every_s = every_s
        self.auth_retry_interval_s = auth_retry_interval_s
        self._held: BatchConsumer | None = None

    def run(self, stop: threading.Event) -> None:
        """Drain until ``stop`` is set."""
        consume_reconnecting(stop, self.names.parked, lambda: self._turn(stop), self._drop)

    def _turn(self, stop: threading.Event) -> bool:
        if stop.is_set():
            return False
        if self._held is None:
            self._held = BatchConsumer(
                self.url,
                self.names,
                queue=self.names.parked,
                prefetch=PARKED_BATCH,
                timeout_s=CONNECTION_TIMEOUT_S,
                keep_headers=True,
            )
        batch = self._held.take(PARKED_BATCH, flush_interval_s=0.1, wait_s=1.0, stop=stop)
        if batch.bodies:
            self._settle(self._held, batch)
        else:
            if self.observers:  # the depth gauges (metrics), as housekeeping on Redis
                self.observers.housekeeping(self._held.depth())
            stop.wait(self.every_s)
        return True

    def _settle(self, held: BatchConsumer, batch: Batch) -> None:
        details = [
            f"RabbitMQ returned this record {delivery_count(headers) or DELIVERY_LIMIT}+ times "
            f"without a settle (delivery limit {DELIVERY_LIMIT}: a worker died holding it each "
            "time) and parked it"
            for headers in batch.headers
        ]
        resolution, summary = plan_parked(batch.bodies, details)
        held.settle(batch, resolution, consumer=self.consumer, name=self.name)
        log_batch(summary, elapsed_s=0.0, auth_retry_interval_s=self.auth_retry_interval_s)

    def _drop(self) -> None:
        if self._held is not None:
            self._held.close()
            self._held = None
