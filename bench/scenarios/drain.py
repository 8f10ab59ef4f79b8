"""Scenario 2: drain rate of a pre-filled backlog on one worker host.

Contenders: the aicm-tasks worker (default settings: batch 500, 4 delivery
threads), plain Celery one task per record (prefork x2), celery-batches
(flush_every 500, prefork x1, prefetch x1000) and the SDK's SQLite delivery
thread. Each backlog is filled before its consumer starts: aicm-tasks with
``track_many``, Celery with cloned ``.delay`` messages, the SDK by inserting
rows as its ``_enqueue`` does.

Two figures per contender, as the anchors reported them:

* spawn→all: records ÷ (stub's last new arrival − ``Popen`` of the worker);
  includes worker start-up. For the SDK the clock starts when
  ``PersistentDelivery`` is constructed (its thread starts), after the
  producer process is up and the queue filled;
* ready→all: records ÷ (last arrival − the moment the consumer is ready to
  deliver): for aicm-tasks, when its delivery threads have registered their
  lease in Redis; for the Celery anchors, when the worker logs ``ready.``;
  for the SDK, the same clock as spawn→all (its thread start). This is the
  like-for-like figure: a long-lived worker pays its start-up once, and the
  SDK's clock never included starting its process;
* steady: records ÷ (last − first arrival at the stub).

Beside them: the consumer tree's peak RSS and CPU time per 1,000 records
(for the SDK, its producer process, which runs the delivery thread), and the
stub's CPU per 1,000 records (to show the stub is not the limit).
"""

# ruff: noqa: RUF002, RUF003  (en dashes, ×, µ and – are meant)

from __future__ import annotations

import logging
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass

from bench.anchors.common import ready_key
from bench.config import Counts
from bench.harness import Bench
from bench.sampling import TreeSampler, cpu_seconds
from bench.scenarios.common import (
    attempt,
    celery_worker_args,
    run_producer,
    start_aicm_worker,
    start_producer,
    wait_result,
)
from bench.stats import Figure

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Contender:
    """How one drain contender is labelled and sized."""

    kind: str
    label: str
    count: int


def contenders(counts: Counts) -> list[Contender]:
    """The four contenders with this run's backlog sizes."""
    return [
        Contender("aicm", "aicm-tasks worker", counts.drain_aicm),
        Contender("sdk", "SDK SQLite delivery thread", counts.drain_sdk),
        Contender("batches", "celery-batches (prefork 1)", counts.drain_batches),
        Contender("plain", "Celery one task per record (prefork 2)", counts.drain_plain),
    ]


@dataclass(frozen=True)
class Drained:
    """One drain: when the clock started, the stub's stats, and the consumer's resources."""

    start_s: float
    ready_s: float
    stats: dict[str, float]
    peak_mb: float
    consumer_cpu_s: float
    stub_cpu_s: float
    redis_commands: int


def run(bench: Bench, counts: Counts) -> list[Figure]:
    """Drain each contender's backlog ``counts.runs`` times."""
    figures: list[Figure] = []
    for contender in contenders(counts):
        spawn_all = Figure(
            f"drain.{contender.kind}.spawn_all", f"drain: {contender.label}, spawn→all", "records/s"
        )
        ready_all = Figure(
            f"drain.{contender.kind}.ready_all", f"drain: {contender.label}, ready→all", "records/s"
        )
        steady = Figure(
            f"drain.{contender.kind}.steady", f"drain: {contender.label}, steady", "records/s"
        )
        spawn_all.note = ready_all.note = steady.note = f"{contender.count:,} records pre-filled"
        if contender.kind == "sdk":
            spawn_all.note += "; clock starts at PersistentDelivery() (thread start)"
        for run_index in range(counts.runs):
            logger.info("drain: %s, run %d/%d", contender.kind, run_index + 1, counts.runs)
            try:
                drained = drain_once(bench, contender)
            except Exception as exc:
                attempt(
                    (spawn_all, ready_all, steady),
                    f"drain {contender.kind} run {run_index + 1}",
                    exc,
                )
                continue
            stats, per_1k = drained.stats, 1000 / contender.count
            last, first = stats["last_new_arrival"], stats["first_arrival"]
            spawn_all.values.append(contender.count / (last - drained.start_s))
            ready_all.values.append(contender.count / (last - drained.ready_s))
            steady.values.append(contender.count / max(last - first, 1e-6))
            spawn_all.also.append(
                {
                    "seconds": last - drained.start_s,
                    "start-up s": drained.ready_s - drained.start_s,
                    "POSTs": stats["requests"],
                    "duplicates": stats["records"] - stats["unique"],
                    "peak RSS MB": drained.peak_mb,
                    "consumer CPU-ms/1k (incl. start-up)": drained.consumer_cpu_s * 1000 * per_1k,
                    "stub CPU-ms/1k": drained.stub_cpu_s * 1000 * per_1k,
                    "Redis cmds/record": drained.redis_commands / contender.count,
                }
            )
        figures += [spawn_all, ready_all, steady]
    return figures


def drain_once(bench: Bench, contender: Contender) -> Drained:
    """Fill, start the consumer, wait until the stub has every record."""
    bench.reset()
    count = contender.count
    timeout_s = max(120.0, count / 300)
    if contender.kind == "sdk":
        sdk_dir = bench.root / bench.unique("sdk-drain")
        args = ["--count", str(count), "--sdk-dir", str(sdk_dir), "--api-base", bench.stub_base_url]
        process, out = start_producer(bench, "sdk-drain", args, bench.env())
        try:
            start_s = float(wait_result(bench, process, out, timeout_s=120)["started_at"])
            return watch(bench, process, start_s, start_s, count, timeout_s)
        finally:
            bench.stop(process)
    queue = bench.unique(f"drain-{contender.kind}")
    if contender.kind == "aicm":
        run_producer(bench, "prefill-aicm", ["--count", str(count)], bench.aicm_env(queue))
        start_s = time.time()
        worker = start_aicm_worker(bench, queue)
        consumers = f"{queue}-keys:consumers"
        ready_s = wait_ready(worker, lambda: bench.redis.zcard(consumers) > 0)
    else:
        env = bench.anchor_env(queue)
        run_producer(bench, "celery-prefill", ["--app", contender.kind, "--count", str(count)], env)
        if contender.kind == "plain":
            module, pool = "bench.anchors.celery_plain", ["--pool=prefork", "--concurrency=2"]
        else:
            module, pool = "bench.anchors.celery_batches_app", ["--pool=prefork", "--concurrency=1"]
        name = bench.unique(f"{contender.kind}-worker")
        start_s = time.time()
        worker = bench.spawn(celery_worker_args(module, name, "-Q", queue, *pool), env, name)
        ready_s = wait_ready(worker, lambda: bench.redis.exists(ready_key(queue)) > 0)
    try:
        return watch(bench, worker, start_s, ready_s, count, timeout_s)
    finally:
        bench.stop(worker)


def wait_ready(
    consumer: subprocess.Popen[bytes], ready: Callable[[], bool], timeout_s: float = 60
) -> float:
    """Poll ``ready`` every 2 ms; returns the time it first held."""
    deadline = time.monotonic() + timeout_s
    while not ready():
        if consumer.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the consumer never became ready")
        time.sleep(0.002)
    return time.time()


def watch(
    bench: Bench,
    consumer: subprocess.Popen[bytes],
    start_s: float,
    ready_s: float,
    count: int,
    timeout_s: float,
) -> Drained:
    """Sample the consumer's tree until the stub has ``count`` records."""
    stub_cpu_before = cpu_seconds(bench.stub_pid)
    commands_before = bench.redis_commands()
    sampler = TreeSampler(consumer.pid).start()
    try:
        stats = bench.stub.wait_for(count, timeout_s=timeout_s)
    finally:
        sampler.stop()
    stub_cpu_s = cpu_seconds(bench.stub_pid) - stub_cpu_before
    commands = bench.redis_commands() - commands_before
    return Drained(
        start_s, ready_s, stats, sampler.peak_mb, sampler.cpu_used_s, stub_cpu_s, commands
    )
