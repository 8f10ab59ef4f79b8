"""The worker and ``aicm-tasks status`` check the broker's eviction policy and
persistence, over private redis-servers set up the way operators get them wrong."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import httpx
import pytest

from aicm_tasks.broker.redis_settings import BrokerSettings
from aicm_tasks.devtools.processes import free_port, wait_until
from aicm_tasks.worker.events import BROKER_MAY_LOSE, CHECK_TASK_NAME
from tests.support.cli import run_cli
from tests.support.flower import running_flower
from tests.support.pipeline import Pipeline, PrivateRedis
from tests.support.shards import ShardedPipeline, sharded_factory

__all__ = ["sharded_factory"]

#: A managed Redis's habit: CONFIG is gone (answers "unknown command").
NO_CONFIG = ("--rename-command", "CONFIG", "")
#: An operator account that may run neither CONFIG nor INFO (ACL, Redis >= 6).
OPERATOR = ("--user", "ops", "on", ">ops-pass", "~*", "&*", "+@all", "-config", "-info")


@pytest.fixture
def make_redis(tmp_path: Path) -> Iterator[Any]:
    started: list[PrivateRedis] = []

    def make(*, appendonly: bool = True, extra_args: tuple[str, ...] = ()) -> PrivateRedis:
        server = PrivateRedis(
            tmp_path / f"redis-{len(started)}", appendonly=appendonly, extra_args=extra_args
        )
        server.start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


def start_checked_worker(pipeline: Pipeline) -> int:
    """A worker with metrics on; returns the metrics port once it has read the settings."""
    port = free_port()
    pipeline.start_worker(AICM_METRICS_PORT=str(port))
    wait_until(
        lambda: pipeline.client.exists(pipeline.store.keys.redis_settings) == 1,
        60,
        "the worker to read the broker's settings",
    )
    return port


def metric(port: int, name: str) -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    (line,) = [line for line in text.splitlines() if line.startswith(f"{name} ")]
    return float(line.split()[1])


def status(pipeline: Pipeline, broker_url: str | None = None) -> tuple[int, dict[str, Any]]:
    env = pipeline.cli_env()
    if broker_url is not None:
        env["AICM_BROKER_URL"] = broker_url
    result: subprocess.CompletedProcess[str] = run_cli("status", "--json", env=env)
    return result.returncode, json.loads(result.stdout)


def test_an_evicting_redis_is_an_error_a_metric_and_an_unhealthy_status(
    pipeline_factory: Any, make_redis: Any
) -> None:
    redis_server = make_redis(extra_args=("--maxmemory-policy", "allkeys-lru"))
    pipeline: Pipeline = pipeline_factory(broker_url=redis_server.url)
    port = start_checked_worker(pipeline)

    wait_until(
        lambda: "ERROR" in pipeline.logs() and "maxmemory-policy is allkeys-lru" in pipeline.logs(),
        30,
        "the worker to log the evicting policy",
    )
    assert metric(port, "aicm_broker_evicting") == 1
    assert metric(port, "aicm_broker_aof_enabled") == 1
    code, figures = status(pipeline)
    assert code == 1
    assert len(figures["problems"]) == 1, figures["problems"]  # a worker is alive: only this
    assert "maxmemory-policy is allkeys-lru" in figures["problems"][0]
    assert figures["redis_settings"]["maxmemory_policy"] == "allkeys-lru"
    assert figures["redis_settings"]["source"] == "CONFIG"
    assert figures["warnings"] == []  # AOF is on


def test_an_operator_watching_only_flower_sees_an_evicting_redis_as_a_failed_task(
    pipeline_factory: Any, make_redis: Any
) -> None:
    redis_server = make_redis(extra_args=("--maxmemory-policy", "allkeys-lru"))
    pipeline: Pipeline = pipeline_factory(broker_url=redis_server.url)
    # Flower first, so it hears the worker's check at start (events are not kept).
    with running_flower(pipeline.cli_env(), wait_for_worker=False) as flower:
        wait_until(lambda: flower.api("/api/workers") == {}, 30, "Flower's API")
        pipeline.start_worker()

        def checks() -> list[dict[str, Any]]:
            return list(flower.api(f"/api/tasks?taskname={CHECK_TASK_NAME}").values())

        wait_until(checks, 60, "the failed broker check in Flower")
        (task,) = checks()
        assert task["state"] == "FAILURE"
        assert task["exception"].startswith(f"{BROKER_MAY_LOSE}(")
        assert "maxmemory-policy is allkeys-lru" in task["exception"]
        assert flower.metric(
            "flower_events_total", task=CHECK_TASK_NAME, type="task-failed",
            worker=task["worker"],
        ) == 1  # fmt: skip


def test_noeviction_without_aof_is_a_warning_shown_by_a_healthy_status(
    pipeline_factory: Any, make_redis: Any
) -> None:
    redis_server = make_redis(appendonly=False)
    pipeline: Pipeline = pipeline_factory(broker_url=redis_server.url)
    port = start_checked_worker(pipeline)

    wait_until(lambda: "AOF and RDB snapshots are off" in pipeline.logs(), 30, "the warning")
    logs = pipeline.logs()
    assert "WARNING" in logs and "put records at risk" not in logs
    assert metric(port, "aicm_broker_evicting") == 0
    assert metric(port, "aicm_broker_aof_enabled") == 0
    code, figures = status(pipeline)
    assert code == 0, figures
    assert figures["healthy"] and figures["problems"] == []
    (warning,) = figures["warnings"]
    assert "AOF and RDB snapshots are off" in warning
    assert figures["redis_settings"]["aof_enabled"] == "0"


def test_without_config_the_worker_and_status_read_info(
    pipeline_factory: Any, make_redis: Any
) -> None:
    redis_server = make_redis(extra_args=("--maxmemory-policy", "allkeys-lru", *NO_CONFIG))
    pipeline: Pipeline = pipeline_factory(broker_url=redis_server.url)
    port = start_checked_worker(pipeline)

    # bytes: redis-py types a reply as bytes | str, whatever decode_responses says.
    fields = cast(dict[bytes, bytes], pipeline.client.hgetall(pipeline.store.keys.redis_settings))
    stored = {k.decode(): v.decode() for k, v in fields.items()}
    assert stored["source"] == "INFO" and stored["maxmemory_policy"] == "allkeys-lru"
    assert "CONFIG GET refused" in stored["note"] and "unknown command" in stored["note"]
    assert stored["aof_enabled"] == "1"
    wait_until(
        lambda: "maxmemory-policy is allkeys-lru" in pipeline.logs(), 30, "the worker's error"
    )
    assert metric(port, "aicm_broker_evicting") == 1
    code, figures = status(pipeline)
    assert code == 1 and "maxmemory-policy is allkeys-lru" in figures["problems"][0]
    assert figures["redis_settings"]["source"] == "INFO"


def test_a_status_that_may_run_neither_config_nor_info_shows_what_the_worker_read(
    pipeline_factory: Any, make_redis: Any
) -> None:
    redis_server = make_redis(extra_args=("--maxmemory-policy", "allkeys-lru", *OPERATOR))
    pipeline: Pipeline = pipeline_factory(broker_url=redis_server.url)
    start_checked_worker(pipeline)
    operator_url = f"redis://ops:ops-pass@127.0.0.1:{redis_server.port}/0"

    code, figures = status(pipeline, broker_url=operator_url)

    assert code == 1
    assert "maxmemory-policy is allkeys-lru" in figures["problems"][0]
    assert figures["redis_settings"]["read_by"] != "status"  # the worker's reading
    assert figures["redis_settings"]["source"] == "CONFIG"


def test_when_nothing_can_be_read_the_settings_are_unknown_with_the_reason(
    pipeline_factory: Any, make_redis: Any
) -> None:
    redis_server = make_redis(extra_args=OPERATOR)
    # The worker runs as the restricted user too: CONFIG and INFO both refused.
    operator_url = f"redis://ops:ops-pass@127.0.0.1:{redis_server.port}/0"
    pipeline: Pipeline = pipeline_factory(broker_url=operator_url)
    port = start_checked_worker(pipeline)

    assert metric(port, "aicm_broker_evicting") == -1
    wait_until(lambda: "maxmemory-policy is unknown" in pipeline.logs(), 30, "the warning")
    code, figures = status(pipeline)
    assert code == 0, figures  # unknown is a warning, not unhealthy
    assert figures["redis_settings"]["source"] == "unknown"
    assert any("no permissions to run the 'info' command" in w for w in figures["warnings"])
    assert "ops-pass" not in pipeline.logs()


def test_every_shards_redis_is_checked_and_the_evicting_one_named(
    sharded_factory: Any, make_redis: Any
) -> None:
    # Shard 1's Redis evicts; shard 2's, read after it each round, does not.
    servers = [
        make_redis(),
        make_redis(extra_args=("--maxmemory-policy", "allkeys-lru")),
        make_redis(appendonly=False),
    ]
    pipeline: ShardedPipeline = sharded_factory([server.url for server in servers])
    port = free_port()
    pipeline.start_worker(AICM_METRICS_PORT=str(port))

    def stored() -> list[BrokerSettings | None]:
        return [
            BrokerSettings.from_hash(store.client.hgetall(store.keys.redis_settings))
            for store in pipeline.stores
        ]

    # Each shard's reading is kept on its own Redis, where status falls back to it.
    wait_until(lambda: all(stored()), 60, "every shard's settings kept on its own Redis")
    readings = [reading for reading in stored() if reading is not None]
    assert [r.maxmemory_policy for r in readings] == ["noeviction", "allkeys-lru", "noeviction"]
    assert [r.aof_enabled for r in readings] == [True, True, False]
    # The unlabelled gauges show the worst shard; the labelled ones each shard.
    shard_2 = 'aicm_shard_broker_evicting{shard="2"} '
    wait_until(
        lambda: shard_2 in httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text,
        30,
        "the metrics of the last shard read",
    )
    assert metric(port, "aicm_broker_evicting") == 1
    assert metric(port, "aicm_broker_aof_enabled") == 0
    for shard, evicting in enumerate([0, 1, 0]):
        assert metric(port, f'aicm_shard_broker_evicting{{shard="{shard}"}}') == evicting
    code, figures = status(pipeline)
    assert code == 1
    (problem,) = figures["problems"]  # a worker is alive: only this
    assert problem.startswith("shard 1: maxmemory-policy is allkeys-lru"), problem
    assert any(w.startswith("shard 2: AOF") for w in figures["warnings"]), figures["warnings"]
    assert "shard 1: maxmemory-policy is allkeys-lru" in pipeline.logs()
