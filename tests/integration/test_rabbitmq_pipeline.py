"""The pipeline on RabbitMQ: real workers (``celery -A aicm_tasks worker``), the
local /track server, a queue of each test's own in the session vhost, exact
accounting (published = delivered + dead-lettered, 0 lost)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from aicm_tasks.broker.messages import encode
from aicm_tasks.broker.rabbitmq.confirms import ConfirmedPublishes
from aicm_tasks.broker.rabbitmq.connection import close_quietly, open_connection
from aicm_tasks.broker.rabbitmq.consumer import BatchConsumer
from aicm_tasks.broker.rabbitmq.topology import declare_record_queue, declare_topology
from aicm_tasks.broker.resolution import Resolution
from aicm_tasks.devtools.processes import wait_until
from aicm_tasks.errors import SettleError
from tests.support.pipeline import local_server
from tests.support.rabbitmq import RabbitVhost
from tests.support.rabbitmq_messages import queue_counts
from tests.support.rabbitmq_pipeline import (
    RabbitPipeline,
    rabbit_pipeline,
    rabbit_pipeline_factory,
    record_messages,
)
from tests.support.rabbitmq_topology import RabbitTopologies

__all__ = ["local_server", "rabbit_pipeline", "rabbit_pipeline_factory"]

pytestmark = pytest.mark.integration


def test_records_published_to_rabbitmq_are_all_delivered_once_in_batches_of_many(
    rabbit_pipeline: RabbitPipeline,
) -> None:
    pipeline = rabbit_pipeline
    messages = record_messages(3000)
    pipeline.publish(messages)
    pipeline.start_worker(AICM_BATCH_SIZE="200")
    pipeline.wait_delivered(3000)
    pipeline.wait_drained()
    result = pipeline.account("pipeline", set(messages))
    assert (result.delivered, result.dead_lettered, result.lost) == (3000, 0, 0), pipeline.logs()
    assert result.duplicates == 0
    figures = pipeline.figures()
    assert sum(f["stats"].get("delivered", 0) for f in figures) == 3000
    # Batches of many: a 3,000-record backlog takes far fewer settles than records.
    assert len(figures) <= 3000 // 50, len(figures)
    assert pipeline.counts() == (0, 2)  # two delivery threads, each one consumer


def test_a_record_parked_past_the_delivery_limit_becomes_a_replayable_dead_letter(
    rabbit_pipeline: RabbitPipeline,
) -> None:
    pipeline = rabbit_pipeline
    parked = record_messages(2, prefix="parked")
    connection = pipeline.connect()
    try:
        publishes = ConfirmedPublishes(connection.channel())
        for body in parked.values():
            # Where RabbitMQ dead-letters a record past x-delivery-limit (a fanout).
            publishes.publish(body, exchange=pipeline.names.parked, routing_key="")
        assert publishes.wait(10) == set()
    finally:
        close_quietly(connection)
    pipeline.start_worker(AICM_BATCH_SIZE="50")
    wait_until(lambda: len(pipeline.dead_letters()) == 2, 60, "the parked records dead-lettered")
    dead = pipeline.dead_letters()
    assert {entry["reason"] for entry in dead.values()} == {"delivery_limit"}
    for response_id, entry in dead.items():
        # Replayable: the whole record, as the producer built it.
        assert json.dumps(entry["record"], separators=(",", ":")).encode() == parked[response_id]
        assert "delivery limit" in entry["detail"]
    assert pipeline.counts(pipeline.names.parked)[0] == 0


def test_a_settle_the_broker_refuses_leaves_the_whole_batch_in_the_queue(
    rabbitmq_vhost: RabbitVhost, rabbit_topologies: RabbitTopologies
) -> None:
    names = rabbit_topologies.new()
    connection = open_connection(rabbitmq_vhost.url, timeout_s=10)
    try:
        # Only the record queue: the dead-letter stream is missing, so the broker
        # returns the dead letter's event (mandatory) and the settle must fail.
        channel = connection.channel()
        declare_record_queue(channel, names)
        publishes = ConfirmedPublishes(channel)
        for body in record_messages(5).values():
            publishes.publish(body, routing_key=names.queue)
        assert publishes.wait(10) == set()
    finally:
        close_quietly(connection)
    consumer = BatchConsumer(rabbitmq_vhost.url, names, prefetch=10, timeout_s=10)
    try:
        batch = consumer.take(5, flush_interval_s=1, wait_s=5)
        assert len(batch) == 5
        entry = json.dumps({"id": "r0", "reason": "rejected"})
        with pytest.raises(SettleError):
            consumer.settle(batch, Resolution(dead_letters=[("r0", entry)]), consumer="c")
    finally:
        consumer.close()
    connection = open_connection(rabbitmq_vhost.url, timeout_s=10)
    try:
        wait_until(
            lambda: queue_counts(connection.channel(), names.queue)[0] == 5,
            30,
            "the batch back in the queue",
        )
    finally:
        close_quietly(connection)


def test_a_settled_batch_sends_its_retries_through_the_delay_topology_and_acks_once(
    rabbitmq_vhost: RabbitVhost, rabbit_topologies: RabbitTopologies
) -> None:
    names = rabbit_topologies.new()
    declare_topology(rabbitmq_vhost.url, names)
    messages = list(record_messages(4).values())
    consumer = BatchConsumer(
        rabbitmq_vhost.url, names, prefetch=10, timeout_s=10, keep_headers=True
    )
    try:
        for body in messages:
            consumer.feed.publishes.publish(body, routing_key=names.queue)
        assert consumer.feed.publishes.wait(10) == set()
        batch = consumer.take(4, flush_interval_s=1, wait_s=5)
        assert batch.bodies == messages
        # Due "now" (0.2 s) still takes the one-second hop, as a new message.
        retry = encode(messages[0], {"retries": 1})
        consumer.settle(
            batch, Resolution(retries=[(0.2, retry)], stats={"retried": 1}), consumer="c"
        )
        back = consumer.take(4, flush_interval_s=0.1, wait_s=15)
        assert back.bodies == [retry]
        # Retried again: a new message, so no x-death history rides along (a
        # carried history is what made RabbitMQ drop Celery's retries as a cycle).
        consumer.settle(back, Resolution(retries=[(1, retry)]), consumer="c")
        again = consumer.take(4, flush_interval_s=0.1, wait_s=15)
        assert again.bodies == [retry]
        assert [death["count"] for death in again.headers[0]["x-death"]] == [1]
        assert consumer.take(4, flush_interval_s=0.1, wait_s=2).bodies == []
    finally:
        consumer.close()


def test_celery_inspect_active_queues_answers_on_rabbitmq_with_the_tracking_queue(
    rabbit_pipeline: RabbitPipeline,
) -> None:
    pipeline = rabbit_pipeline
    pipeline.start_worker()
    env = {**os.environ, **pipeline.worker_env()}

    def inspected() -> str:
        result = subprocess.run(
            [sys.executable, "-m", "celery", "-A", "aicm_tasks", "inspect", "active_queues",
             "--timeout", "2", "--json"],
            env=env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        return result.stdout if result.returncode == 0 else ""

    wait_until(lambda: pipeline.queue in inspected(), 60, "inspect to list the tracking queue")
    queues = {q["name"]: q for reply in json.loads(inspected()).values() for q in reply}
    # Celery declares both with the transport's exact arguments (no 406).
    assert queues[pipeline.queue]["queue_arguments"] == pipeline.names.record_queue_arguments()
    assert queues["aicm.tasks"]["queue_arguments"] == {"x-queue-type": "quorum"}
    log = "\n".join(p.read_text() for p in pipeline.log_dir.glob("*.log"))
    assert "ERROR" not in log and "Traceback" not in log, log[-3000:]
    assert "redis" not in log.lower(), "a RabbitMQ worker must not touch Redis"


def test_depth_counts_records_waiting_in_the_queue_and_in_the_delay_levels(
    rabbitmq_vhost: RabbitVhost, rabbit_topologies: RabbitTopologies
) -> None:
    # A delay topology of its own: the record parked there for 600 s must not
    # count in other tests' drains.
    names = rabbit_topologies.new(own_delays=True)
    declare_topology(rabbitmq_vhost.url, names)
    consumer = BatchConsumer(rabbitmq_vhost.url, names, prefetch=1, timeout_s=10)
    try:
        first, second = record_messages(2).values()
        consumer.feed.publishes.publish(first, routing_key=names.queue)
        consumer.feed.publishes.publish(second, routing_key=names.queue)
        assert consumer.feed.publishes.wait(10) == set()
        batch = consumer.take(1, flush_interval_s=0.1, wait_s=5)  # prefetch 1: one held
        consumer.settle(batch, Resolution(retries=[(600, first)]), consumer="c")
        depth = consumer.depth()
        # The second record may be on its way to this consumer (unacked: not counted).
        assert (depth["scheduled"], depth["parked"]) == (1, 0)
    finally:
        consumer.close()
    probe = BatchConsumer(rabbitmq_vhost.url, names, prefetch=1, timeout_s=10, queue=names.parked)
    try:
        wait_until(lambda: probe.depth()["queued"] == 1, 30, "the unacked record back")
        assert probe.depth() == {"queued": 1, "scheduled": 1, "parked": 0}
    finally:
        probe.close()


def test_an_idle_worker_marks_the_figures_stream_so_status_sees_it_alive_and_idle(
    rabbit_pipeline: RabbitPipeline,
) -> None:
    """Nothing queued: each worker appends an ``idle_at`` mark at most every
    IDLE_NOTE_S (not one per thread per empty wait), and ``status`` names the
    worker as alive from those marks, with no "no figures" warning."""
    from aicm_tasks.worker.rabbitmq_service import IDLE_NOTE_S
    from tests.support.cli import run_cli

    pipeline = rabbit_pipeline
    started = time.monotonic()
    pipeline.start_worker()

    def idle_marks() -> list[dict]:
        return [f for f in pipeline.figures() if "idle_at" in f["noted"]]

    wait_until(lambda: len(idle_marks()) >= 2, 60, "two idle marks")
    elapsed_s = time.monotonic() - started
    marks = idle_marks()
    assert len({m["consumer"] for m in marks}) == 1
    assert len(marks) <= elapsed_s / IDLE_NOTE_S + 2, (len(marks), elapsed_s)
    env = {key: value for key, value in pipeline.worker_env().items() if key.startswith("AICM_")}
    result = run_cli("status", "--json", env=env, timeout_s=120)
    seen = json.loads(result.stdout)
    assert result.returncode == 0, seen["problems"]
    assert [name for name in seen["workers_alive"] if name.startswith("w0-")], seen
    assert not any("no worker appended figures" in w for w in seen["warnings"]), seen["warnings"]
    assert seen["idle_s_ago"] is not None and seen["idle_s_ago"] < 60
