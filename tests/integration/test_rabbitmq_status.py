"""``aicm-tasks status`` and ``monitor`` on RabbitMQ, as real CLI subprocesses.

The figures stream is seeded with the events workers append
(:func:`~aicm_tasks.broker.rabbitmq.events.figures_event`), records are queued
on the record queue and in the delay levels, and dead letters on their stream;
each test has its own queue and delay prefix in the session's vhost.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest
import redis.connection
from click.testing import CliRunner

from aicm_tasks.broker.health import Thresholds
from aicm_tasks.broker.keys import (
    LAST_DELIVERED_AT,
    LAST_UNAUTHORIZED_AT,
    RATE_DELIVERED,
    RATE_REQUESTS,
    RATE_UNAUTHORIZED,
    UNAUTHORIZED_SINCE,
)
from aicm_tasks.broker.rabbitmq.confirms import ConfirmedPublishes
from aicm_tasks.broker.rabbitmq.connection import close_quietly, open_connection
from aicm_tasks.broker.rabbitmq.events import dead_event, figures_event
from aicm_tasks.broker.rabbitmq.figures import RabbitFiguresReader, record_queue_risk
from aicm_tasks.broker.rabbitmq.names import RabbitNames
from aicm_tasks.broker.rabbitmq.streams import StreamReader
from aicm_tasks.broker.rabbitmq.topology import declare_topology
from aicm_tasks.broker.resolution import Resolution
from aicm_tasks.cli import main
from aicm_tasks.devtools.processes import wait_until
from aicm_tasks.producer.record import build_record
from aicm_tasks.settings import Settings
from aicm_tasks.worker.metrics import Metrics
from tests.integration.test_rabbitmq_dlq import append_events, dead_letter_entries
from tests.support.cli import run_cli
from tests.support.rabbitmq_topology import RabbitTopologies

pytestmark = pytest.mark.integration


@pytest.fixture
def names(rabbit_topologies: RabbitTopologies) -> RabbitNames:
    # A delay prefix of its own, so "scheduled" counts only this test's records
    # (deleted after the test with the rest).
    return rabbit_topologies.new(own_delays=True)


def env_of(rabbitmq_vhost, names: RabbitNames) -> dict[str, str]:
    return {
        "AICM_BROKER_URL": rabbitmq_vhost.url,
        "AICM_QUEUE": names.queue,
        "AICM_KEY_PREFIX": names.prefix,
        "AICM_HEALTH_WINDOW_S": "120",
    }


def queue_records(url: str, names: RabbitNames, queued: int, delayed: int) -> None:
    """``queued`` records on the record queue, ``delayed`` in the delay levels (an hour)."""
    records = [build_record("openai::gpt-4o", {"input_tokens": 1}).message for _ in range(queued)]
    append_events(url, names.queue, records)
    connection = open_connection(url, timeout_s=10)
    try:
        publishes = ConfirmedPublishes(connection.channel())
        for _ in range(delayed):
            publishes.publish(
                build_record("openai::gpt-4o", {"input_tokens": 1}).message,
                exchange=names.delay_entry,
                routing_key=names.delay_routing_key(3600),
            )
        assert publishes.wait(10) == set()
    finally:
        close_quietly(connection)


def figures(at: float, worker: str = "c1", **resolution: Any) -> bytes:
    return figures_event(worker, f"{worker}@host", Resolution(**resolution), at)


def status(env: dict[str, str], *args: str) -> tuple[int, dict[str, Any]]:
    result = run_cli("status", "--json", *args, env=env, timeout_s=120)
    assert result.stdout, result.stderr
    return result.returncode, json.loads(result.stdout)


def test_status_is_healthy_while_records_flow(rabbitmq_vhost, names: RabbitNames) -> None:
    declare_topology(rabbitmq_vhost.url, names)
    queue_records(rabbitmq_vhost.url, names, queued=3, delayed=2)
    ((rid, entry),) = dead_letter_entries([("d1", "error", "acme::x")])
    append_events(rabbitmq_vhost.url, names.dead_letters, [dead_event(rid, entry, time.time())])
    now = time.time()
    append_events(
        rabbitmq_vhost.url,
        names.figures,
        [
            figures(now - 30, "c1", rates={RATE_DELIVERED: 40, RATE_REQUESTS: 1},
                    stats={"delivered": 40}, noted=(LAST_DELIVERED_AT,)),
            figures(now - 2, "c2", rates={RATE_DELIVERED: 10, RATE_REQUESTS: 1},
                    stats={"delivered": 10}, noted=(LAST_DELIVERED_AT,)),
        ],
    )  # fmt: skip
    code, seen = status(env_of(rabbitmq_vhost, names))
    assert code == 0, seen["problems"]
    assert seen["healthy"] is True and seen["problems"] == []
    assert (seen["queued"], seen["scheduled"], seen["parked"], seen["held"]) == (3, 2, 0, 0)
    assert seen["dead_letters"] == 1 and seen["dead_letters_by_reason"] == {"error": 1}
    assert seen["delivered_last_minute"] == 50 and seen["recent"]["delivered"] == 50
    assert seen["totals"] == {"delivered": 50}
    assert sorted(seen["workers_alive"]) == ["c1@host", "c2@host"]
    assert seen["rabbitmq"]["as_declared_by_aicm_tasks"] is True
    assert 0 <= seen["last_delivered_s_ago"] < 60


def test_records_waiting_longer_than_the_window_with_nothing_delivered_is_unhealthy(
    rabbitmq_vhost, names: RabbitNames
) -> None:
    declare_topology(rabbitmq_vhost.url, names)
    queue_records(rabbitmq_vhost.url, names, queued=4, delayed=0)
    now = time.time()
    append_events(
        rabbitmq_vhost.url,
        names.figures,
        [
            figures(now - 400, rates={RATE_DELIVERED: 5}, noted=(LAST_DELIVERED_AT,)),
            figures(now - 300, rates={RATE_REQUESTS: 1, RATE_UNAUTHORIZED: 1},
                    noted=(LAST_UNAUTHORIZED_AT,), started=(UNAUTHORIZED_SINCE,)),
            figures(now - 1, rates={RATE_REQUESTS: 1, RATE_UNAUTHORIZED: 1},
                    noted=(LAST_UNAUTHORIZED_AT,), started=(UNAUTHORIZED_SINCE,)),
        ],
    )  # fmt: skip
    code, seen = status(env_of(rabbitmq_vhost, names))
    assert code == 1 and seen["healthy"] is False
    problems = seen["problems"]
    assert any(
        "4 records waiting (4 queued, 0 scheduled for a retry, 0 held) and none delivered for" in p
        and "(threshold 120s)" in p
        for p in problems
    ), problems
    assert any("/track has refused the API key (401/403) for 3" in p for p in problems), problems
    assert seen["last_delivered_s_ago"] >= 395 and 295 <= seen["unauthorized_for_s"] < 400
    assert seen["workers_alive"] == ["c1@host"]  # alive, yet nothing moves


def test_no_worker_seen_is_unhealthy_and_monitor_draws_a_frame(
    rabbitmq_vhost, names: RabbitNames
) -> None:
    declare_topology(rabbitmq_vhost.url, names)
    env = env_of(rabbitmq_vhost, names)
    code, seen = status(env)
    assert code == 1 and seen["workers_alive"] == []
    assert any("no worker alive for 60s (never seen)" in p for p in seen["problems"])
    frame = run_cli("monitor", "--once", env=env, timeout_s=120)
    assert frame.returncode == 0, frame.stderr
    assert f"RabbitMQ queue {names.queue}" in frame.stdout
    assert "quorum, as aicm-tasks declares it" in frame.stdout


def test_a_classic_record_queue_is_reported_as_a_risk(rabbitmq_vhost, names: RabbitNames) -> None:
    connection = open_connection(rabbitmq_vhost.url, timeout_s=10)
    try:
        connection.channel().queue_declare(names.queue, durable=True, auto_delete=False)
    finally:
        close_quietly(connection)
    append_events(
        rabbitmq_vhost.url, names.queue, [build_record("openai::gpt-4o", {"n": 1}).message]
    )
    code, seen = status(env_of(rabbitmq_vhost, names))
    assert code == 1
    assert seen["rabbitmq"]["as_declared_by_aicm_tasks"] is False
    assert any(
        f"the record queue {names.queue} is not declared as aicm-tasks declares it" in p
        and "inequivalent arg" in p
        for p in seen["problems"]
    ), seen["problems"]


def test_status_on_rabbitmq_opens_no_redis_connection(
    rabbitmq_vhost, names: RabbitNames, monkeypatch: pytest.MonkeyPatch
) -> None:
    declare_topology(rabbitmq_vhost.url, names)

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a Redis connection was opened on the RabbitMQ path")

    monkeypatch.setattr(redis.connection.AbstractConnection, "connect", refuse)
    env = env_of(rabbitmq_vhost, names)
    result = CliRunner().invoke(main, ["status", "--json"], env=env)
    assert json.loads(result.output)["rabbitmq"]["declared"] is True, result.output
    for command in (["dlq", "stats", "--json"], ["monitor", "--once"]):
        done = CliRunner().invoke(main, command, env=env)
        assert done.exit_code == 0, done.output


def test_the_worker_metrics_read_the_depths_on_rabbitmq(
    rabbitmq_vhost, names: RabbitNames, monkeypatch: pytest.MonkeyPatch
) -> None:
    declare_topology(rabbitmq_vhost.url, names)
    queue_records(rabbitmq_vhost.url, names, queued=6, delayed=1)
    append_events(rabbitmq_vhost.url, names.figures, [figures(time.time())])

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a Redis connection was opened on the RabbitMQ path")

    monkeypatch.setattr(redis.connection.AbstractConnection, "connect", refuse)
    settings = Settings(broker_url=rabbitmq_vhost.url, queue=names.queue, key_prefix=names.prefix)
    metrics = Metrics.for_settings(settings)
    stop = threading.Event()
    stop.set()  # one reading, then return
    metrics.follow_depth(stop)
    gauges = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in metrics.registry.collect()
        for sample in family.samples
    }
    assert gauges[("aicm_records", (("state", "queued"),))] == 6
    assert gauges[("aicm_records", (("state", "scheduled"),))] == 1
    assert gauges[("aicm_records", (("state", "parked"),))] == 0
    assert gauges[("celery_queue_length", (("queue_name", names.queue),))] == 6
    assert gauges[("aicm_workers_with_lease", ())] == 1


def test_a_kept_reader_takes_new_events_without_appending_another_mark(
    rabbitmq_vhost, names: RabbitNames
) -> None:
    declare_topology(rabbitmq_vhost.url, names)
    reader = RabbitFiguresReader(rabbitmq_vhost.url, names, window_s=120)
    thresholds = Thresholds(window_s=120)
    try:
        first = reader.read(thresholds)
        assert first.dead_letters == 0 and first.workers_alive == []
        entries = dead_letter_entries([("x1", "error", "acme::x"), ("x2", "error", "acme::x")])
        append_events(
            rabbitmq_vhost.url,
            names.dead_letters,
            [dead_event(rid, entry, time.time()) for rid, entry in entries],
        )
        append_events(
            rabbitmq_vhost.url,
            names.figures,
            [figures(time.time(), rates={RATE_DELIVERED: 3}, noted=(LAST_DELIVERED_AT,))],
        )
        # What arrived is taken as it arrives (a live view may lag one frame).
        wait_until(lambda: reader.read(thresholds).dead_letters == 2, 30, "the new dead letters")
        later = reader.read(thresholds)
        assert later.workers_alive == ["c1@host"] and later.delivered_last_minute == 3
    finally:
        reader.close()
    connection = open_connection(rabbitmq_vhost.url, timeout_s=10)
    try:
        events = [e for _, e in StreamReader(connection, names.dead_letters).to_end()]
    finally:
        close_quietly(connection)
    # The reader's one mark, the two dead letters, and this read's own mark (not yielded).
    assert [e["event"] for e in events] == ["mark", "dead", "dead"]


def test_a_consumer_on_the_record_queue_counts_as_alive_with_a_warning(
    rabbitmq_vhost, names: RabbitNames
) -> None:
    declare_topology(rabbitmq_vhost.url, names)
    connection = open_connection(rabbitmq_vhost.url, timeout_s=10)
    try:
        channel = connection.channel()
        channel.basic_qos(0, 1, False)
        channel.basic_consume(names.queue, callback=lambda message: None, no_ack=False)
        code, seen = status(env_of(rabbitmq_vhost, names))
    finally:
        close_quietly(connection)
    assert code == 0, seen["problems"]
    assert seen["workers_alive"] == [f"1 consumer of {names.queue}"]
    assert seen["rabbitmq"]["consumers"] == 1
    assert any("no worker appended figures in the last 60s" in w for w in seen["warnings"])


def test_a_length_limit_set_by_the_operator_is_not_a_risk(
    rabbitmq_vhost, names: RabbitNames, rabbit_topologies: RabbitTopologies
) -> None:
    connection = open_connection(rabbitmq_vhost.url, timeout_s=10)
    try:
        channel = connection.channel()
        channel.queue_declare(
            names.queue,
            durable=True,
            auto_delete=False,
            arguments=names.record_queue_arguments(max_length=1000),
        )
        assert record_queue_risk(connection, names) is None
        other = rabbit_topologies.track(
            RabbitNames(queue=f"{names.queue}.other", prefix=names.prefix)
        )
        connection.channel().queue_declare(
            other.queue,
            durable=True,
            auto_delete=False,
            arguments={**other.record_queue_arguments(max_length=10), "x-overflow": "drop-head"},
        )
        risk = record_queue_risk(connection, other)
        assert risk is not None and "inequivalent arg 'x-overflow'" in risk
    finally:
        close_quietly(connection)
