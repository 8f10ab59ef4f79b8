"""``aicm-tasks status`` and ``monitor`` tell the truth during a /track outage and
with a wrong key, over real parts: the test Redis, real worker processes and the
real local /track server (taken down and brought back). A small health window
keeps each test to seconds; every wait is on a condition, never a duration.
"""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
from typing import Any
from urllib.parse import urlsplit

import pytest

from aicm_tasks.devtools.processes import start_server, stop_process, wait_until
from tests.support.cli import run_cli
from tests.support.pipeline import Pipeline, publish

pytestmark = pytest.mark.integration

#: The health window of these tests, in seconds (AICM_HEALTH_WINDOW_S).
WINDOW_S = "3"


def status(pipeline: Pipeline, *args: str) -> tuple[int, dict[str, Any]]:
    env = {**pipeline.cli_env(), "AICM_HEALTH_WINDOW_S": WINDOW_S}
    result = run_cli("status", "--json", *args, env=env)
    return result.returncode, json.loads(result.stdout)


def status_until(
    pipeline: Pipeline, wanted: Any, what: str, *args: str, timeout_s: float = 90
) -> dict:
    """Run status (with ``args``) until ``wanted(exit_code, figures)``; returns those figures."""
    seen: list[tuple[int, dict[str, Any]]] = []

    def check() -> bool:
        seen.append(status(pipeline, *args))
        return bool(wanted(*seen[-1]))

    try:
        wait_until(check, timeout_s, what, interval_s=0.5)
    except TimeoutError:
        raise AssertionError(f"{what}; last status: {seen[-1] if seen else None}") from None
    return seen[-1][1]


def has(problems: list[str], text: str) -> bool:
    return any(text in p for p in problems)


def test_a_track_outage_is_a_stall_where_transport_errors_dominate_until_it_ends(
    pipeline: Pipeline, tmp_path: Any
) -> None:
    pipeline.start_worker()
    publish(pipeline, 20, prefix="before")
    pipeline.wait_settled(20)
    status_until(pipeline, lambda code, f: code == 0, "status healthy while /track answers")

    # /track goes down: its process stops, so connections are refused.
    stop_process(pipeline.server.process)
    publish(pipeline, 30, prefix="during")
    figures = status_until(
        pipeline,
        lambda code, f: code == 1 and has(f["problems"], "transport errors dominate"),
        "status to say transport errors dominate",
    )
    problems = figures["problems"]
    assert has(problems, "none delivered for") and has(problems, "records waiting"), problems
    assert figures["waiting"] == 30 and figures["healthy"] is False
    assert figures["recent"]["transport_failed"] * 2 > figures["recent"]["requests"] > 0

    # /track is back on the same port: the retries deliver, status is healthy again.
    port = urlsplit(pipeline.server.url).port
    assert port is not None
    server = start_server(port, tmp_path / "events.sqlite3", pipeline.server.api_key)
    try:
        pipeline.wait_settled(50)
        figures = status_until(pipeline, lambda code, f: code == 0, "status healthy again")
        assert figures["recent"]["delivered"] >= 30 and figures["last_delivered_s_ago"] < 60
    finally:
        stop_process(server)


def test_a_wrong_key_is_unhealthy_and_says_the_key_is_refused(pipeline: Pipeline) -> None:
    pipeline.start_worker(AICM_API_KEY="not-the-servers-key")
    publish(pipeline, 10)
    figures = status_until(
        pipeline,
        lambda code, f: code == 1 and has(f["problems"], "/track has refused the API key"),
        "status to say the key is refused",
    )
    assert figures["unauthorized_for_s"] >= float(WINDOW_S)
    assert figures["recent"]["unauthorized"] > 0 and figures["waiting"] == 10
    assert has(figures["problems"], "check AICM_API_KEY")
    # Nothing was lost or burnt meanwhile: the records are kept for the right key.
    assert pipeline.store.depth()["dead_letters"] == 0
    raw = run_cli("status", env=pipeline.cli_env())
    assert "not-the-servers-key" not in raw.stdout + raw.stderr


def test_the_window_comes_from_the_option_too(pipeline: Pipeline) -> None:
    pipeline.start_worker(AICM_API_KEY="not-the-servers-key")
    publish(pipeline, 3)
    status_until(
        pipeline,
        lambda code, f: has(f["problems"], "/track has refused the API key"),
        "the key refused for 3 s",
    )
    # The same pipeline, judged over an hour: not yet unhealthy for the key.
    result = run_cli("status", "--json", "--window", "3600", env=pipeline.cli_env())
    figures = json.loads(result.stdout)
    assert figures["window_s"] == 3600
    assert not has(figures["problems"], "/track has refused the API key"), figures["problems"]


def test_a_countdown_not_yet_due_keeps_status_healthy(pipeline: Pipeline) -> None:
    pipeline.start_worker()
    publish(pipeline, 5)  # a delivery to count a stall from
    pipeline.wait_settled(5)
    pipeline.track.apply_async(("openai::gpt-4o-mini", {"n": 1}), countdown=3600)
    scheduled_at = time.monotonic()
    # Judge it once a worker has noted "nothing due" well after the record was
    # scheduled and the window has passed: a countdown waits for nobody.
    figures = status_until(
        pipeline,
        lambda code, f: (
            f["idle_s_ago"] is not None
            and time.monotonic() - scheduled_at - f["idle_s_ago"] > 2 * float(WINDOW_S)
        ),
        "a worker to note nothing due, a window after the countdown was scheduled",
    )
    code, figures = status(pipeline)
    assert (figures["scheduled"], figures["due"]) == (1, 0)
    assert code == 0, figures["problems"]


def test_a_backfill_is_not_reported_stale_but_a_record_waiting_long_is(
    pipeline: Pipeline,
) -> None:
    # No worker: records stay queued. One tracked years ago, enqueued now.
    pipeline.track.delay("openai::gpt-4o-mini", {"n": 1}, timestamp=1_000_000_000)
    _code, figures = status(pipeline, "--max-oldest-queued", "60")
    assert figures["oldest_queued_s"] < 60, figures
    assert not has(figures["problems"], "oldest queued record"), figures["problems"]
    # Waiting past a 1 s threshold since it was enqueued: stale, whatever its timestamp.
    figures = status_until(
        pipeline,
        lambda code, f: code == 1 and has(f["problems"], "oldest queued record"),
        "the record to be older than 1 s since enqueued",
        "--max-oldest-queued",
        "1",
    )
    assert figures["oldest_queued_s"] < 3600, figures


def test_workers_are_named_as_flower_names_them_with_the_consumer_id_beside(
    pipeline: Pipeline,
) -> None:
    worker = pipeline.start_worker()
    args = [str(arg) for arg in worker.args]  # type: ignore[union-attr]
    name = args[args.index("-n") + 1].replace("%h", socket.gethostname())
    figures = status_until(pipeline, lambda code, f: f["workers_alive"], "a worker alive")
    assert figures["workers_alive"] == [name]
    (shown,) = figures["workers"]
    assert shown["name"] == name and shown["alive"] is True
    consumer: str = shown["consumer"]
    assert f":{worker.pid}:" in consumer
    table = run_cli("status", env=pipeline.cli_env())
    assert name in table.stdout and consumer in table.stdout


def test_monitor_shows_what_flows_in_the_last_5_s_beside_the_minute(pipeline: Pipeline) -> None:
    pipeline.start_worker()
    stop = threading.Event()

    def flow() -> None:  # about 100 records a second until the test is done
        n = 0
        while not stop.wait(0.01):
            pipeline.track.delay("openai::gpt-4o-mini", {"n": n})
            n += 1

    publisher = threading.Thread(target=flow, daemon=True)
    publisher.start()
    frames: list[str] = []

    def flowing_now() -> bool:
        result = run_cli("monitor", "--once", env={**pipeline.cli_env(), "COLUMNS": "160"})
        frames.append(result.stdout)
        row = next(line for line in result.stdout.splitlines() if "delivered, last 5 s" in line)
        return any(ch in "123456789" for ch in row.split("delivered, last 5 s")[1])

    try:
        wait_until(flowing_now, 90, "monitor to show records delivered in the last 5 s")
        assert "delivered, last minute" in frames[-1]
        # The JSON carries the same figure.
        status_until(pipeline, lambda code, f: f["delivered_last_5s"] > 0, "status: the 5 s rate")
    finally:
        stop.set()
        publisher.join(30)


def test_status_exit_code_is_1_from_a_real_subprocess_with_the_reasons_on_the_table(
    pipeline: Pipeline,
) -> None:
    publish(pipeline, 2)  # no worker at all
    result: subprocess.CompletedProcess[str] = run_cli(
        "status", env={**pipeline.cli_env(), "AICM_HEALTH_WINDOW_S": WINDOW_S}
    )
    assert result.returncode == 1
    assert "unhealthy" in result.stdout and "no worker alive" in result.stdout
