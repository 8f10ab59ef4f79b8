"""Scenario 8: RabbitMQ: the transport's producer beside the floors it is held to (issue 16).

On the shared RabbitMQ (``BENCH_RABBITMQ_URL``, default
``amqp://guest:guest@127.0.0.1:5672/``), in a virtual host made for this run
and deleted after (``tests/support/rabbitmq.py``; RabbitMQ cannot be started
privately as cheaply as ``redis-server``):

* publish cost per call, p50 and p99, each contender in a fresh process as in
  ``publish``: a bare py-amqp publish of the record's JSON, persistent, to a
  durable quorum queue, waiting for the publisher confirm (the floor of a
  publish that promises "the broker holds it"), the same without the confirm
  (the difference is what confirms cost), plain Celery ``.delay`` with Celery's
  defaults (classic queue, no confirm), and Celery ``.delay`` with what Celery's
  docs ask for quorum queues (``task_default_queue_type="quorum"`` and
  ``confirm_publish``);
* drain: a bare py-amqp consumer of a quorum queue holding ``counts.rabbitmq_drain``
  records, prefetch 2,000, one ``basic_ack(multiple=True)`` per 500, messages/s;
* confirmed lists: ``counts.many_batches`` lists of ``counts.many_batch`` records
  published to a quorum queue with one confirm wait per list (``track_many``'s
  shape on RabbitMQ), records/s;
* stream read: the same consumer reading a stream of ``counts.rabbitmq_drain``
  records from its first offset (how the dead-letter store would be folded).

Targets (``bench/targets.py``): ``track.delay`` p50 at most 1.3× the bare
confirmed publish of the same run; its ratio to plain Celery ``.delay`` (which
waits for no confirm) is reported beside it.
"""

# ruff: noqa: RUF001, RUF002, RUF003  (× and µ are meant)

from __future__ import annotations

import logging
import os

from bench.config import Counts
from bench.harness import Bench
from bench.scenarios.common import attempt, run_producer
from bench.stats import Figure
from tests.support.rabbitmq import RabbitVhost, connect, private_vhost

logger = logging.getLogger(__name__)

#: The broker the scenario uses (a private vhost is made on it for the run).
RABBITMQ_URL = os.environ.get("BENCH_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/")
#: The drain consumer's shape (issue 16): prefetch and deliveries per multiple ack.
DRAIN_PREFETCH = 2_000
DRAIN_ACK_EVERY = 500

LABELS = {
    "aicm-amqp": "RabbitMQ: aicm-tasks track.delay (quorum + confirm)",
    "amqp-confirm": "RabbitMQ: bare py-amqp publish + confirm (quorum)",
    "amqp-noconfirm": "RabbitMQ: bare py-amqp publish, no confirm (quorum)",
    "celery-amqp": "RabbitMQ: plain Celery .delay (classic, no confirm)",
    "celery-amqp-quorum": "RabbitMQ: Celery .delay (quorum + confirm_publish)",
}


def run(bench: Bench, counts: Counts) -> list[Figure]:
    """Publish cost of every contender and the bare drain, ``counts.runs`` times each."""
    publish: dict[str, tuple[Figure, Figure]] = {
        kind: (
            Figure(f"rabbitmq.{kind}.p50_us", f"{label} p50", "µs/call"),
            Figure(f"rabbitmq.{kind}.p99_us", f"{label} p99", "µs/call"),
        )
        for kind, label in LABELS.items()
    }
    drain = Figure(
        "rabbitmq.drain.bare",
        f"RabbitMQ: bare py-amqp drain (prefetch {DRAIN_PREFETCH:,}, ack ×{DRAIN_ACK_EVERY})",
        "msgs/s",
    )
    batches = Figure(
        "rabbitmq.confirm_batch",
        f"RabbitMQ: confirmed lists of {counts.many_batch:,} (one wait a list, quorum)",
        "records/s",
    )
    stream = Figure(
        "rabbitmq.stream_read",
        f"RabbitMQ: bare py-amqp read of a stream (prefetch {DRAIN_PREFETCH:,})",
        "msgs/s",
    )
    with private_vhost(RABBITMQ_URL, label="bench") as vhost:
        version = server_version(vhost)
        logger.info("rabbitmq %s, vhost %s", version, vhost.name)
        for run_index in range(counts.runs):
            for kind, (p50, p99) in publish.items():
                logger.info("rabbitmq: %s, run %d/%d", kind, run_index + 1, counts.runs)
                try:
                    result = measure_publish(bench, vhost, kind, counts)
                except Exception as exc:
                    attempt((p50, p99), f"rabbitmq {kind} run {run_index + 1}", exc)
                    continue
                p50.values.append(result["p50_us"])
                p99.values.append(result["p99_us"])
                p50.also.append(
                    {"calls/s": result["calls_per_s"], "max ms": result["max_us"] / 1000}
                )
            logger.info("rabbitmq: drain, run %d/%d", run_index + 1, counts.runs)
            try:
                result = measure_drain(bench, vhost, counts)
            except Exception as exc:
                attempt((drain,), f"rabbitmq drain run {run_index + 1}", exc)
                continue
            drain.values.append(result["messages_per_s"])
            drain.also.append({"s": result["seconds"], "left": result["left"]})
            logger.info("rabbitmq: confirmed lists, run %d/%d", run_index + 1, counts.runs)
            try:
                result = measure_confirm_batch(bench, vhost, counts)
            except Exception as exc:
                attempt((batches,), f"rabbitmq confirmed lists run {run_index + 1}", exc)
            else:
                batches.values.append(result["records_per_s"])
                batches.also.append({"nacked": result["nacked"]})
            logger.info("rabbitmq: stream read, run %d/%d", run_index + 1, counts.runs)
            try:
                result = measure_drain(bench, vhost, counts, stream=True)
            except Exception as exc:
                attempt((stream,), f"rabbitmq stream read run {run_index + 1}", exc)
            else:
                stream.values.append(result["messages_per_s"])
                stream.also.append({"s": result["seconds"]})
    for p50, p99 in publish.values():
        p99.note = p50.note = f"RabbitMQ {version}; {counts.publish_calls:,} timed calls a run"
    stream.note = drain.note = f"RabbitMQ {version}; {counts.rabbitmq_drain:,} records a run"
    batches.note = f"RabbitMQ {version}; {counts.many_batches} lists a run"
    return [figure for pair in publish.values() for figure in pair] + [drain, batches, stream]


def server_version(vhost: RabbitVhost) -> str:
    """The broker's version, as it announces it when a connection opens."""
    with connect(vhost.url) as connection:
        # py-amqp keeps the broker's connection.start properties; its stubs omit them.
        properties: dict = getattr(connection, "server_properties", {})
        version = properties.get("version", "?")
    return version.decode() if isinstance(version, bytes) else str(version)


def measure_publish(bench: Bench, vhost: RabbitVhost, kind: str, counts: Counts) -> dict:
    """One run of one publish contender in its own producer process, on a fresh queue."""
    env = bench.env(
        {
            "BENCH_BROKER_URL": vhost.url,
            "BENCH_QUEUE": bench.unique(kind),
            # aicm-amqp: a record the broker did not confirm is spooled here, not in ~/.cache.
            "AICM_SPOOL_DIR": str(bench.root / "spool-rabbitmq"),
        }
    )
    args = ["--kind", kind, "--calls", str(counts.publish_calls),
            "--warmup", str(counts.publish_warmup)]  # fmt: skip
    return run_producer(bench, "publish-cost", args, env)


def measure_drain(bench: Bench, vhost: RabbitVhost, counts: Counts, stream: bool = False) -> dict:
    """One fill-then-drain run of the bare consumer in its own process, on a fresh queue
    (or stream)."""
    name = bench.unique("stream" if stream else "drain")
    env = bench.env({"BENCH_BROKER_URL": vhost.url, "BENCH_QUEUE": name})
    args = ["--count", str(counts.rabbitmq_drain), "--prefetch", str(DRAIN_PREFETCH),
            "--ack-every", str(DRAIN_ACK_EVERY), *(["--stream"] if stream else [])]  # fmt: skip
    return run_producer(bench, "amqp-drain", args, env)


def measure_confirm_batch(bench: Bench, vhost: RabbitVhost, counts: Counts) -> dict:
    """One run of confirmed lists in its own producer process, on a fresh queue."""
    env = bench.env({"BENCH_BROKER_URL": vhost.url, "BENCH_QUEUE": bench.unique("lists")})
    args = ["--batch", str(counts.many_batch), "--batches", str(counts.many_batches)]
    return run_producer(bench, "amqp-confirm-batch", args, env)
