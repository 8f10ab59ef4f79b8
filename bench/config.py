"""How many records, calls and runs each scenario uses: full and ``--quick``."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Counts:
    """Sizes of every scenario; ``FULL`` is what ``make bench`` runs."""

    runs: int
    #: Timed calls per publisher (after ``publish_warmup`` untimed ones).
    publish_calls: int
    publish_warmup: int
    #: Pre-filled backlog per drain contender.
    drain_aicm: int
    drain_sdk: int
    drain_batches: int
    drain_plain: int
    #: Records per producer process (two processes) in the sustained scenario.
    sustained_aicm: int
    sustained_sdk: int
    #: Offered load for the latency scenario.
    latency_rate: int
    latency_duration_s: float
    #: Backlog drained while the worker's RSS is sampled.
    rss_records: int
    rss_prefill_chunk: int
    #: ``track_many`` list size and how many lists per run.
    many_batch: int
    many_batches: int
    #: Producer processes that must all stop after a limit trips, and how many
    #: records after they all publish the server trips it.
    limits_producers: int = 4
    limits_trip_after: int = 2_000
    #: Records in the quorum queue the bare RabbitMQ consumer drains (rabbitmq scenario).
    rabbitmq_drain: int = 100_000
    #: Records one worker drains per deployment in the cluster scenario.
    cluster_drain: int = 100_000


FULL = Counts(
    runs=3,
    publish_calls=20_000,
    publish_warmup=500,
    drain_aicm=100_000,
    drain_sdk=100_000,
    # The per-message anchors drain at ~0.9k and ~1.4k records/s: 100,000 would
    # take 2-4 minutes a run, so they drain smaller backlogs (a rate either way).
    drain_batches=50_000,
    drain_plain=20_000,
    sustained_aicm=50_000,
    # The SDK's producers publish at ~2k records/s each: 10,000 each keeps the
    # run about as long as aicm-tasks' 2 x 50,000.
    sustained_sdk=10_000,
    latency_rate=2_000,
    latency_duration_s=30.0,
    rss_records=500_000,
    rss_prefill_chunk=10_000,
    many_batch=1_000,
    many_batches=100,
)

QUICK = Counts(
    runs=1,
    publish_calls=2_000,
    publish_warmup=100,
    drain_aicm=10_000,
    drain_sdk=10_000,
    drain_batches=2_000,
    drain_plain=1_000,
    sustained_aicm=5_000,
    sustained_sdk=1_000,
    latency_rate=2_000,
    latency_duration_s=5.0,
    rss_records=50_000,
    rss_prefill_chunk=10_000,
    many_batch=1_000,
    many_batches=10,
    rabbitmq_drain=10_000,
    cluster_drain=10_000,
)
