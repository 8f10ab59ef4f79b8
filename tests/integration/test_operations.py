"""What operators see: Flower, the worker's /metrics, and aicm-tasks status."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
from collections import Counter
from typing import Any

import httpx
import pytest

from aicm_tasks.devtools.processes import free_port, stop_process, wait_until
from tests.support.cli import run_cli
from tests.support.faults import FaultProxy
from tests.support.flower import result_of, running_flower
from tests.support.pipeline import LocalServer, Pipeline, publish

pytestmark = pytest.mark.integration

MARKER = "payload-marker-7f3a"


def cli_status(pipeline: Pipeline, *args: str) -> subprocess.CompletedProcess[str]:
    env = pipeline.cli_env()
    return run_cli("status", "--json", *args, env=env)


def flower_env(pipeline: Pipeline) -> dict[str, str]:
    env = pipeline.worker_env()
    env.pop("AICM_API_KEY")  # Flower needs the broker, never the API key
    return env


def test_flower_and_the_worker_metrics_report_the_pipelines_work(pipeline: Pipeline) -> None:
    metrics_port = free_port()
    pipeline.start_worker(AICM_METRICS_PORT=str(metrics_port))
    with running_flower(flower_env(pipeline), basic_auth=("op", "pw")) as flower:
        good = [
            pipeline.track.delay(
                "openai::gpt-4o-mini",
                {"input_tokens": n, "note": MARKER},
                customer_key=f"cust{n % 5}",
            ).id
            for n in range(1500)
        ]
        unknown = publish(pipeline, 30, service="acme::unknown", prefix="unk")
        pipeline.wait_settled(1530)

        def delivered_in_flower() -> int:
            # Batches holding a dead letter are FAILURE, the others SUCCESS:
            # every batch counts its delivered records.
            return sum(result_of(t)["delivered"] for t in flower.batches())

        wait_until(
            lambda: delivered_in_flower() == 1500, 30, "Flower to count every delivered record"
        )
        dead_in_flower = sum(sum(result_of(t)["dead_lettered"].values()) for t in flower.batches())
        assert dead_in_flower == 30
        assert httpx.get(f"{flower.base}/api/tasks", timeout=10).status_code == 401  # no auth
        served = json.dumps(flower.api("/api/tasks"))
        assert good[0] in served or any(rid in served for rid in good)  # response_ids are shown
        assert "cust0" in served and "openai::gpt-4o-mini" in served
        assert MARKER not in served and "input_tokens" not in served  # payloads are not
        assert pipeline.server.api_key not in served

        def queue_names() -> set[str]:
            queues = flower.api("/api/queues/length")
            return {q["name"] for q in queues["active_queues"]}

        # Flower refreshes what workers consume in the background.
        wait_until(lambda: pipeline.settings.queue in queue_names(), 60, "Flower to list the queue")
        flower_metrics = httpx.get(f"{flower.base}/metrics", timeout=10).text
        assert (
            'flower_events_total{task="aicm_tasks.deliver_batch",type="task-succeeded"'
            in flower_metrics
        )

        worker_metrics = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
        assert "aicm_records_delivered_total 1500.0" in worker_metrics
        assert (
            'aicm_records_dead_lettered_total{reason="service_key_unknown"} 30.0' in worker_metrics
        )
        assert 'aicm_track_responses_total{status="200"}' in worker_metrics
        assert set(unknown) == {e for e in unknown if pipeline.dead_letters.get(e)}


def test_flower_counts_retried_and_failed_batches_and_nothing_stays_prefetched(
    pipeline_factory: Any, local_server: LocalServer
) -> None:
    metrics_port = free_port()
    with FaultProxy(local_server.url) as proxy:
        pipeline = pipeline_factory(api_base=proxy.url)
        pipeline.start_worker(AICM_METRICS_PORT=str(metrics_port))
        # The API opened the README's other way: FLOWER_UNAUTHENTICATED_API=true.
        with running_flower(flower_env(pipeline)) as flower:

            def states() -> Counter[str]:
                return Counter(task["state"] for task in flower.batches())

            # A /track outage: every batch is rescheduled, and Flower says so.
            proxy.set("503")
            publish(pipeline, 200)
            wait_until(lambda: states()["RETRY"] >= 2, 60, "Flower to show retried batches")
            assert states()["SUCCESS"] == 0  # nothing was delivered while /track was down
            # /track is back; 30 records it refuses become dead letters.
            proxy.set("pass")
            publish(pipeline, 30, service="acme::unknown", prefix="unk")
            pipeline.wait_settled(230)
            pipeline.wait_drained()

            def counted_in_flower() -> bool:
                results = [result_of(task) for task in flower.batches()]
                delivered = sum(r["delivered"] for r in results)
                dead = sum(sum(r["dead_lettered"].values()) for r in results)
                return (delivered, dead) == (200, 30)

            wait_until(counted_in_flower, 60, "Flower to count every settled record")
            # Nothing is queued or held any more: no event is still to come.
            tasks = flower.batches()
            flower_metrics = flower.metrics()
            # The dashboard's Succeeded / Failed / Retried columns, per worker.
            (dashboard,) = flower.api("/workers?json=1")["data"]

        by_state = Counter(task["state"] for task in tasks)
        assert by_state["RETRY"] >= 2 and by_state["FAILURE"] >= 1, by_state
        assert set(by_state) <= {"SUCCESS", "RETRY", "FAILURE"}, by_state
        for task in tasks:
            result = result_of(task)
            assert task["started"] is not None and task["received"] is not None
            if task["state"] == "RETRY":
                assert result["retried"] > 0 and not result["dead_lettered"], task
                assert task["exception"].startswith("RetryScheduled("), task
                assert "HTTP 503" in task["exception"], task
            elif task["state"] == "FAILURE":
                assert result["dead_lettered"].get("service_key_unknown", 0) > 0, task
                assert task["exception"].startswith("DeadLettered("), task
                assert "service_key_unknown" in task["exception"], task
            else:
                assert result["retried"] == 0 and not result["dead_lettered"], task
                assert task["exception"] is None, task
        shown = json.dumps(tasks)
        assert local_server.api_key not in shown and "input_tokens" not in shown

        # The worker counted the same retries record by record, and gives the
        # (now empty) queue's length under celery-exporter's name.
        def worker_metrics() -> str:
            return httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text

        retried = sum(result_of(task)["retried"] for task in tasks)
        assert f"aicm_records_retried_total {float(retried)}" in worker_metrics()
        queue_length = f'celery_queue_length{{queue_name="{pipeline.settings.queue}"}} 0.0'
        wait_until(lambda: queue_length in worker_metrics(), 60, "the queue's length at 0")

        # Flower's Prometheus view: batches by outcome, and the prefetched gauge
        # back to 0 (each batch's task-started answers its task-received).
        (worker,) = {task["worker"] for task in tasks}
        name = "aicm_tasks.deliver_batch"

        def sample(metric: str, **labels: str) -> float | None:
            return flower_metrics.get((metric, frozenset(labels.items())))

        def events(type_: str) -> float | None:
            return sample("flower_events_total", worker=worker, type=type_, task=name)

        assert events("task-retried") == by_state["RETRY"]
        assert events("task-failed") == by_state["FAILURE"]
        assert (events("task-succeeded") or 0) == by_state["SUCCESS"]
        assert events("task-received") == events("task-started") == len(tasks)
        assert sample("flower_worker_prefetched_tasks", worker=worker, task=name) == 0
        assert dashboard["task-failed"] == by_state["FAILURE"]
        assert dashboard["task-retried"] == by_state["RETRY"]
        assert dashboard.get("task-succeeded", 0) == by_state["SUCCESS"]


def test_status_is_healthy_with_a_worker_and_says_why_not_otherwise(pipeline: Pipeline) -> None:
    nobody = cli_status(pipeline)
    assert nobody.returncode == 1
    assert any("no worker alive" in p for p in json.loads(nobody.stdout)["problems"])

    worker = pipeline.start_worker()
    publish(pipeline, 100)
    publish(pipeline, 3, service="acme::unknown", prefix="unk")
    pipeline.wait_settled(103)
    healthy = cli_status(pipeline)
    assert healthy.returncode == 0, healthy.stdout
    figures = json.loads(healthy.stdout)
    assert figures["healthy"] and figures["delivered_last_minute"] >= 100
    assert figures["dead_letters"] == 3 and figures["dead_letters_by_reason"] == {
        "service_key_unknown": 3
    }

    too_many = cli_status(pipeline, "--max-dead-letters", "2")
    assert too_many.returncode == 1
    assert "3 dead letters (threshold 2)" in json.loads(too_many.stdout)["problems"]

    stop_process(worker)
    pipeline.track.delay("openai::gpt-4o-mini", {"n": 1})  # queued; no worker takes it
    stale: list[subprocess.CompletedProcess[str]] = []

    def reported_stale() -> bool:
        stale.append(cli_status(pipeline, "--max-oldest-queued", "1", "--no-worker-for", "600"))
        problems = json.loads(stale[-1].stdout)["problems"]
        return stale[-1].returncode == 1 and any("oldest queued record" in p for p in problems)

    wait_until(reported_stale, 60, "status to report the queued record older than 1 s")


def test_status_reports_an_unreachable_broker() -> None:
    env = {**os.environ, "AICM_BROKER_URL": f"redis://127.0.0.1:{free_port()}/0"}
    result = run_cli("status", "--json", env=env)
    assert result.returncode == 2
    assert json.loads(result.stdout)["healthy"] is False


def test_monitor_draws_a_frame(pipeline: Pipeline) -> None:
    env = pipeline.cli_env()
    result = run_cli("monitor", "--once", env=env)
    assert result.returncode == 0, result.stderr
    assert "queued (waiting for a worker)" in result.stdout and "workers alive" in result.stdout


def test_monitor_quits_cleanly_on_ctrl_c(pipeline: Pipeline) -> None:
    # A pseudo-terminal, as an operator has: rich's live view only draws there.
    leader, follower = pty.openpty()
    monitor = subprocess.Popen(
        [sys.executable, "-m", "aicm_tasks", "monitor", "--interval", "0.2"],
        env={**os.environ, **pipeline.cli_env(), "COLUMNS": "120"},
        stdin=subprocess.DEVNULL,
        stdout=follower,
        stderr=subprocess.PIPE,
    )
    os.close(follower)
    screen = b""
    deadline = time.monotonic() + 60
    try:
        while b"workers alive" not in screen and time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 1.0)
            if ready:
                screen += os.read(leader, 65536)
        assert b"workers alive" in screen, screen[-2000:]
        monitor.send_signal(signal.SIGINT)
        _out, err = monitor.communicate(timeout=30)
    finally:
        if monitor.poll() is None:
            monitor.kill()
        os.close(leader)
    assert monitor.returncode == 0, err
    assert b"Traceback" not in err
