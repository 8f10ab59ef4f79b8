"""Prometheus metrics of a worker, served on ``AICM_METRICS_PORT``.

Delivery runs in the worker's main process (threads; see bootstep.py), whatever
Celery pool is chosen, so one process-local registry holds every figure: there
is nothing to aggregate across pool children, and the endpoint is served by
that same process.

Beside the ``aicm_*`` figures, one metric under the name celery-exporter
(danihodovic/celery-exporter) gives it: ``celery_queue_length{queue_name}``, a
gauge of the messages waiting in a broker queue, so its Grafana dashboards and
alerts (``CeleryHighQueueLength``) read the tracking queue unchanged.
docs/monitoring.md lists which of its metrics are here and which are not.

On Redis the depths come from the worker's housekeeping; on RabbitMQ
(:meth:`Metrics.for_settings`) the metrics read them themselves every few
seconds, over AMQP only.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from aicm_tasks.broker.health import Thresholds
from aicm_tasks.broker.rabbitmq.connection import RABBIT_ERRORS
from aicm_tasks.broker.rabbitmq.figures import RabbitFiguresReader, depth_of
from aicm_tasks.broker.rabbitmq.names import RabbitNames
from aicm_tasks.broker.redis_settings import BrokerSettings, Finding, evicts_records
from aicm_tasks.settings import DEFAULT_QUEUE, Settings
from aicm_tasks.worker.observe import BatchReport, Observer
from aicm_tasks.worker.retry import next_pause_s

logger = logging.getLogger(__name__)

BATCH_BUCKETS = (1, 10, 50, 100, 200, 500, 750, 1000)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
#: States of the ``aicm_records`` gauge (``parked``: RabbitMQ only).
DEPTH_STATES = ("queued", "scheduled", "held", "dead_letters", "parked")
#: How often the metrics read the depths themselves on RabbitMQ, in seconds
#: (as often as the Redis worker's housekeeping reads them).
DEPTH_INTERVAL_S = 5.0


class Metrics(Observer):
    """The worker's metrics; an observer of the delivery service."""

    def __init__(
        self, registry: CollectorRegistry | None = None, *, queue: str = DEFAULT_QUEUE
    ) -> None:
        self.registry = registry or CollectorRegistry()
        self.queue = queue
        #: Reads the depths on RabbitMQ, where no housekeeping reads them
        #: (:meth:`for_settings`); followed from :meth:`serve`.
        self.read_depth: Callable[[], dict[str, int]] | None = None
        r = self.registry
        self.delivered = Counter(
            "aicm_records_delivered", "Records the server accepted.", registry=r
        )
        self.dead_lettered = Counter(
            "aicm_records_dead_lettered",
            "Records put in the dead-letter store.",
            ["reason"],
            registry=r,
        )
        self.retried = Counter(
            "aicm_records_retried", "Records scheduled for another try.", registry=r
        )
        self.batch_size = Histogram(
            "aicm_batch_size_records",
            "Records per settled batch.",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.request_seconds = Histogram(
            "aicm_track_request_seconds",
            "Duration of POST /track.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.responses = Counter(
            "aicm_track_responses",
            "Answers to POST /track by HTTP status ('none': no answer).",
            ["status"],
            registry=r,
        )
        self.depth = Gauge(
            "aicm_records", "Records by where they are in Redis.", ["state"], registry=r
        )
        # celery-exporter's name, type and label (a Gauge "celery_queue_length",
        # label "queue_name", set to the Redis queue's LLEN as it reads it); not
        # prefixed, so dashboards built on it find the tracking queue. With
        # several shards, the sum of every shard's list under the queue's name;
        # on RabbitMQ, the record queue's ready count (as celery-exporter reads it).
        self.celery_queue_length = Gauge(
            "celery_queue_length",
            "The number of message in broker queue (celery-exporter's name): records "
            "queued in the tracking queue.",
            ["queue_name"],
            registry=r,
        )
        self.shard_depth_gauge = Gauge(
            "aicm_shard_records",
            "Records by shard and where they are (with several shards; aicm_records sums them).",
            ["shard", "state"],
            registry=r,
        )
        self.shard_up = Gauge(
            "aicm_shard_up",
            "1: the shard's Redis answered this worker's last housekeeping round on it; "
            "0: it did not (its aicm_shard_records are then stale). With several shards.",
            ["shard"],
            registry=r,
        )
        self.workers = Gauge("aicm_workers_with_lease", "Workers holding a live lease.", registry=r)
        self.broker_evicting = Gauge(
            "aicm_broker_evicting",
            "1: the broker's maxmemory-policy may evict records (allkeys-*); 0: it may not; "
            "-1: unknown (CONFIG and INFO refused).",
            registry=r,
        )
        self.broker_aof = Gauge(
            "aicm_broker_aof_enabled", "1: the broker's AOF is on; 0: off; -1: unknown.", registry=r
        )
        self.broker_settings = Gauge(
            "aicm_broker_settings_info",
            "Always 1; the labels are the broker's settings as last read.",
            ["maxmemory_policy", "appendonly", "source"],
            registry=r,
        )
        self.shard_broker_evicting = Gauge(
            "aicm_shard_broker_evicting",
            "aicm_broker_evicting of each shard's Redis (with several shards; "
            "aicm_broker_evicting is the worst of them).",
            ["shard"],
            registry=r,
        )
        self.shard_broker_aof = Gauge(
            "aicm_shard_broker_aof_enabled",
            "aicm_broker_aof_enabled of each shard's Redis (with several shards; "
            "aicm_broker_aof_enabled is the worst of them).",
            ["shard"],
            registry=r,
        )
        # Each shard's last reading: the unlabelled gauges show the worst, so
        # one shard's safe Redis never hides another's evicting one.
        self._shard_settings: dict[int, BrokerSettings] = {}

    @classmethod
    def for_settings(cls, settings: Settings) -> Metrics:
        """The worker's metrics; on RabbitMQ they read the depths themselves (the
        record queue, the delay levels, the parked queue, the dead-letter and
        figures streams; no Redis), every :data:`DEPTH_INTERVAL_S` once served."""
        metrics = cls(queue=settings.queue)
        if settings.records_on_rabbitmq:
            names = RabbitNames(settings.queue, settings.key_prefix)
            thresholds = Thresholds(window_s=settings.health_window_s)
            reader = RabbitFiguresReader(settings.broker_url, names, window_s=thresholds.window_s)
            metrics.read_depth = lambda: depth_of(reader.read(thresholds))
        return metrics

    def request_done(self, http_status: int | None, seconds: float) -> None:
        self.request_seconds.observe(seconds)
        self.responses.labels(status=str(http_status) if http_status else "none").inc()

    def batch_settled(self, report: BatchReport) -> None:
        summary = report.summary
        self.delivered.inc(summary.delivered)
        self.retried.inc(summary.retried)
        for reason, count in summary.dead_lettered.items():
            self.dead_lettered.labels(reason=reason).inc(count)
        self.batch_size.observe(len(report.items))

    def housekeeping(self, depth: dict[str, int]) -> None:
        for state in DEPTH_STATES:
            self.depth.labels(state=state).set(depth.get(state, 0))
        self.celery_queue_length.labels(queue_name=self.queue).set(depth.get("queued", 0))
        self.workers.set(depth.get("workers", 0))

    def shard_depth(self, shard: int, depth: dict[str, int]) -> None:
        for state in ("queued", "scheduled", "held", "dead_letters"):
            self.shard_depth_gauge.labels(shard=str(shard), state=state).set(depth.get(state, 0))

    def shard_answered(self, shard: int, answered: bool) -> None:
        self.shard_up.labels(shard=str(shard)).set(int(answered))

    def redis_settings_read(
        self, settings: BrokerSettings, findings: list[Finding], shard: int = 0
    ) -> None:
        self._shard_settings[shard] = settings
        readings = list(self._shard_settings.values())
        if len(self._shard_settings) > 1:
            for number, reading in self._shard_settings.items():
                self.shard_broker_evicting.labels(shard=str(number)).set(_evicting(reading))
                self.shard_broker_aof.labels(shard=str(number)).set(_aof(reading))
        # Worst first: evicting (1) over unknown (-1) over safe (0); AOF off (0)
        # over unknown (-1) over on (1).
        evicting = [_evicting(r) for r in readings]
        self.broker_evicting.set(1 if 1 in evicting else min(evicting))
        aof = [_aof(r) for r in readings]
        self.broker_aof.set(0 if 0 in aof else min(aof))
        self.broker_settings.clear()  # one series per distinct reading of the shards
        for reading in readings:
            on = reading.aof_enabled
            self.broker_settings.labels(
                maxmemory_policy=reading.maxmemory_policy or "unknown",
                appendonly="unknown" if on is None else ("yes" if on else "no"),
                source=reading.source,
            ).set(1)

    def serve(self, port: int, addr: str = "0.0.0.0") -> None:
        """Serve ``/metrics`` on ``port`` from a background thread (and, with a
        :attr:`read_depth`, keep the depth gauges fresh from another)."""
        start_http_server(port, addr=addr, registry=self.registry)
        if self.read_depth is not None:
            threading.Thread(
                target=self.follow_depth, name="aicm-metrics-depth", daemon=True
            ).start()

    def follow_depth(
        self, stop: threading.Event | None = None, interval_s: float = DEPTH_INTERVAL_S
    ) -> None:
        """Set the depth gauges from :attr:`read_depth` every ``interval_s`` until
        ``stop``; a broker that does not answer is logged and tried again, backing off."""
        stop = stop or threading.Event()
        pause_s = interval_s
        while True:
            try:
                if self.read_depth is not None:
                    self.housekeeping(self.read_depth())
                pause_s = interval_s
            except RABBIT_ERRORS as exc:
                logger.warning("metrics could not read the queue depths: %s", exc)
                pause_s = max(interval_s, next_pause_s(pause_s))
            if stop.wait(pause_s):
                return


def _evicting(settings: BrokerSettings) -> int:
    """1: the policy may evict records; 0: it may not; -1: unknown."""
    evicting = evicts_records(settings)
    return -1 if evicting is None else int(evicting)


def _aof(settings: BrokerSettings) -> int:
    """1: AOF on; 0: off; -1: unknown."""
    return -1 if settings.aof_enabled is None else int(settings.aof_enabled)
