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

import httpx
import pytest

from aicm_tasks.devtools.processes import free_port, stop_process, wait_until
from tests.support.cli import run_cli
from tests.support.pipeline import Pipeline, publish

pytestmark = pytest.mark.integration

MARKER = "payload-marker-7f3a"


def cli_status(pipeline: Pipeline, *args: str) -> subprocess.CompletedProcess[str]:
    env = pipeline.cli_env()
    return run_cli("status", "--json", *args, env=env)


def test_flower_and_the_worker_metrics_report_the_pipelines_work(pipeline: Pipeline) -> None:
    metrics_port, flower_port = free_port(), free_port()
    pipeline.start_worker(AICM_METRICS_PORT=str(metrics_port))
    env = {**os.environ, **pipeline.worker_env()}
    env.pop("AICM_API_KEY")  # Flower needs the broker, never the API key
    flower = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "aicm_tasks",
            "flower",
            f"--port={flower_port}",
            "--address=127.0.0.1",
            "--basic-auth=op:pw",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    try:
        base = f"http://127.0.0.1:{flower_port}"
        auth = ("op", "pw")
        wait_until(
            lambda: httpx.get(f"{base}/healthcheck", timeout=2).status_code == 200, 60, "Flower"
        )
        wait_until(
            lambda: httpx.get(f"{base}/api/workers?refresh=1", auth=auth, timeout=10).json(),
            60,
            "Flower to see the worker",
        )
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

        def tasks() -> dict:
            return httpx.get(
                f"{base}/api/tasks?taskname=aicm_tasks.deliver_batch", auth=auth, timeout=10
            ).json()

        def delivered_in_flower() -> int:
            return sum(
                json.loads(t["result"])["delivered"]
                for t in tasks().values()
                if t["state"] == "SUCCESS"
            )

        wait_until(
            lambda: delivered_in_flower() == 1500, 30, "Flower to count every delivered record"
        )
        dead_in_flower = sum(
            sum(json.loads(t["result"])["dead_lettered"].values()) for t in tasks().values()
        )
        assert dead_in_flower == 30
        served = httpx.get(f"{base}/api/tasks", auth=auth, timeout=10).text
        assert good[0] in served or any(rid in served for rid in good)  # response_ids are shown
        assert "cust0" in served and "openai::gpt-4o-mini" in served
        assert MARKER not in served and "input_tokens" not in served  # payloads are not
        assert pipeline.server.api_key not in served

        def queue_names() -> set[str]:
            queues = httpx.get(f"{base}/api/queues/length", auth=auth, timeout=10).json()
            return {q["name"] for q in queues["active_queues"]}

        # Flower refreshes what workers consume in the background.
        wait_until(lambda: pipeline.settings.queue in queue_names(), 60, "Flower to list the queue")
        flower_metrics = httpx.get(f"{base}/metrics", timeout=10).text
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
    finally:
        stop_process(flower)


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
