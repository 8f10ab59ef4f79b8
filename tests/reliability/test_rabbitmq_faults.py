"""The fault suite's core on RabbitMQ: every scenario ends with exact accounting and 0 lost.

published = delivered (unique response_id at the server) + dead-lettered (the
fold of the dead-letter stream). Duplicates are allowed (at-least-once) and
reported. Real workers (``celery -A aicm_tasks worker``), the local /track
server, the fault proxy in between; the broker is the session vhost of the
shared RabbitMQ, or a private node for the test that kills it. The skeletons
they share are in ``tests/support/rabbitmq_faults.py``.
"""

from __future__ import annotations

import os
import signal
import time

from aicm_tasks.broker.messages import malformed_id
from aicm_tasks.devtools.processes import stop_process, wait_until
from aicm_tasks.producer.record import build_record
from tests.support.faults import FaultProxy, hold
from tests.support.pipeline import local_server
from tests.support.rabbitmq_faults import outage_then_back, proxied_rabbit_pipeline
from tests.support.rabbitmq_node import PrivateRabbit
from tests.support.rabbitmq_pipeline import (
    RabbitPipeline,
    rabbit_pipeline,
    rabbit_pipeline_factory,
    record_messages,
)

__all__ = [
    "local_server",
    "proxied_rabbit_pipeline",
    "rabbit_pipeline",
    "rabbit_pipeline_factory",
]

#: What ``proxied_rabbit_pipeline`` gives: a pipeline on the session vhost (its
#: topology deleted after) whose workers post to /track through the proxy.
ProxiedPipeline = tuple[RabbitPipeline, FaultProxy]


def test_sigkill_of_workers_mid_batch_loses_nothing_on_rabbitmq(
    proxied_rabbit_pipeline: ProxiedPipeline,
) -> None:
    pipeline, proxy = proxied_rabbit_pipeline
    # Every POST takes 1 s: a kill always finds batches in flight, each
    # worker holding up to two prefetched batches per thread, unacknowledged,
    # and the run (about 400 records/s) outlasts three kills and restarts.
    proxy.state.slow_s = 1.0
    proxy.set("slow")
    messages = record_messages(20_000)
    pipeline.publish(messages)
    workers = [pipeline.start_worker(AICM_BATCH_SIZE="100") for _ in range(2)]
    kills = 0
    while kills < 3:
        done = pipeline.delivered()

        def progressed(since: int = done) -> bool:
            return pipeline.delivered() > since + 1000

        wait_until(progressed, 120, "progress")
        victim = kills % 2
        os.kill(workers[victim].pid, signal.SIGKILL)
        workers[victim].wait(10)
        workers[victim] = pipeline.start_worker(AICM_BATCH_SIZE="100")
        kills += 1
    assert pipeline.delivered() < 20_000  # the kills came mid-run
    started = time.monotonic()
    pipeline.wait_delivered(20_000, timeout_s=240)
    pipeline.wait_drained()
    result = pipeline.account(
        f"sigkill x{kills} mid-batch, 2 workers",
        set(messages),
        recovery_s=time.monotonic() - started,
    )
    assert (result.published, result.delivered, result.lost, result.dead_lettered) == (
        20_000,
        20_000,
        0,
        0,
    )


def test_rabbitmq_killed_and_restarted_mid_run_loses_nothing(
    rabbit_pipeline_factory, private_rabbitmq: PrivateRabbit, local_server
) -> None:
    with FaultProxy(local_server.url) as proxy:
        proxy.state.slow_s = 0.5  # delivery takes long enough to be cut in the middle
        proxy.set("slow")
        pipeline: RabbitPipeline = rabbit_pipeline_factory(private_rabbitmq.url, api_base=proxy.url)
        # RabbitMQ 3.x: a quorum queue declared seconds before a crash can come
        # back without its Raft member (docs/design/rabbitmq.md, "A 3.10
        # hazard"); one clean restart after the declaration makes it crash-safe.
        private_rabbitmq.stop()
        private_rabbitmq.start()
        messages = record_messages(10_000)
        pipeline.publish(messages)
        for _ in range(2):
            pipeline.start_worker(AICM_BATCH_SIZE="100")
        wait_until(lambda: pipeline.delivered() > 2000, 120, "delivery under way")
        private_rabbitmq.kill()
        assert pipeline.delivered() < 10_000  # killed mid-run
        hold(2)
        private_rabbitmq.start()
        restarted = time.monotonic()
        pipeline.wait_delivered(10_000, timeout_s=240)
        pipeline.wait_drained()
        result = pipeline.account(
            "RabbitMQ SIGKILLed and restarted",
            set(messages),
            recovery_s=time.monotonic() - restarted,
        )
        assert (result.delivered, result.lost, result.dead_lettered) == (10_000, 0, 0)
        # The workers reconnected by themselves: none exited, both consume again.
        assert all(w.poll() is None for w in pipeline.workers), pipeline.logs()
        wait_until(lambda: pipeline.consumers() >= 4, 60, "both workers' threads consuming")
        logs = [log.read_text(errors="replace") for log in pipeline.log_dir.glob("*.log")]
        assert all("what this worker held goes back to the queue" in log for log in logs)


def test_track_down_then_back_retries_through_the_delay_topology(
    proxied_rabbit_pipeline: ProxiedPipeline,
) -> None:
    pipeline, proxy = proxied_rabbit_pipeline
    pipeline.start_worker(AICM_RETRY_MAX_S="3", AICM_BATCH_SIZE="200")
    result = outage_then_back(
        pipeline, proxy, answer="503", seen=10, hold_s=8, count=2000, prefix="down",
        scenario="/track 503 then back",
    )  # fmt: skip
    assert (result.delivered, result.lost, result.dead_lettered) == (2000, 0, 0)
    retried = sum(f["stats"].get("retried", 0) for f in pipeline.figures())
    assert retried >= 2000  # every record went through the delay topology at least once


def test_401_for_a_while_then_the_key_is_fixed_on_rabbitmq(
    proxied_rabbit_pipeline: ProxiedPipeline,
) -> None:
    pipeline, proxy = proxied_rabbit_pipeline
    # A 401 is not the record's fault: never counted against the retries.
    pipeline.start_worker(AICM_MAX_RETRIES="1")
    result = outage_then_back(
        pipeline, proxy, answer="401", seen=3, hold_s=4, count=1000, prefix="auth",
        scenario="401 then fixed",
    )  # fmt: skip
    assert (result.delivered, result.lost, result.dead_lettered) == (1000, 0, 0)


def test_poison_records_are_dead_lettered_with_their_reason_and_their_batch_mates_delivered(
    proxied_rabbit_pipeline: ProxiedPipeline,
) -> None:
    pipeline, proxy = proxied_rabbit_pipeline
    pipeline.start_worker(AICM_MAX_RETRIES="2", AICM_BATCH_SIZE="200")
    # A server that answers 500 to every request holding one record, and a
    # message no worker can read, both in the middle of large batches.
    proxy.set("crash")
    good = record_messages(600, prefix="good")
    crash = record_messages(1, prefix="crash", service="crash::model")
    unreadable = b"\xff not a record"
    bodies = list(good.values())
    bodies[100:100] = list(crash.values())
    bodies[300:300] = [unreadable]
    pipeline.publish(bodies)
    pipeline.wait_delivered(600, timeout_s=120)
    wait_until(lambda: len(pipeline.dead_letters()) == 2, 120, "two dead letters")
    # A server that refuses a request holding a record it cannot take (422).
    proxy.set("poison")
    more = record_messages(300, prefix="more")
    poison = {
        f"poison{n}": build_record(
            "openai::gpt-4o-mini", {"poison": True}, response_id=f"poison{n}"
        ).message
        for n in range(2)
    }
    bodies = list(more.values())
    bodies[50:50] = [poison["poison0"]]
    bodies[250:250] = [poison["poison1"]]
    pipeline.publish(bodies)
    pipeline.wait_delivered(900, timeout_s=120)
    wait_until(lambda: len(pipeline.dead_letters()) == 4, 120, "four dead letters")
    pipeline.wait_drained()
    published = set(good) | set(crash) | {malformed_id(unreadable)} | set(more) | set(poison)
    result = pipeline.account("poison: 500, unreadable, 422", published)
    dead = {dead_id: entry["reason"] for dead_id, entry in pipeline.dead_letters().items()}
    assert dead == {
        "crash0": "retries_exhausted",
        malformed_id(unreadable): "malformed",
        "poison0": "rejected",
        "poison1": "rejected",
    }
    assert (result.delivered, result.dead_lettered, result.lost) == (900, 4, 0)


def test_a_warm_shutdown_settles_in_flight_batches_and_returns_the_prefetched_rest(
    proxied_rabbit_pipeline: ProxiedPipeline,
) -> None:
    pipeline, proxy = proxied_rabbit_pipeline
    proxy.state.slow_s = 0.5
    proxy.set("slow")
    messages = record_messages(5000, prefix="term")
    pipeline.publish(messages)
    worker = pipeline.start_worker(AICM_BATCH_SIZE="200")
    wait_until(lambda: pipeline.delivered() >= 400, 120, "delivery under way")
    assert stop_process(worker) == 0  # SIGTERM: Celery's warm shutdown
    stopped_at = pipeline.delivered()
    assert stopped_at < 5000
    # Nothing held by anyone: what the worker had prefetched is ready again.
    ready, consumers = pipeline.counts()
    assert consumers == 0 and ready > 0
    pipeline.start_worker(AICM_BATCH_SIZE="200")
    pipeline.wait_delivered(5000, timeout_s=240)
    pipeline.wait_drained()
    result = pipeline.account("SIGTERM mid-run, then a new worker", set(messages))
    assert (result.delivered, result.lost, result.dead_lettered) == (5000, 0, 0)
    # In-flight batches were settled before the exit, not posted twice.
    assert result.duplicates == 0
