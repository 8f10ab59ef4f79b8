"""The operator's commands and metrics while a shard's Redis is down: told which shard, with
the others' figures and dead letters still shown, never a traceback, never
"healthy". Real standalone primaries (one stopped), a real worker, the CLI in a
real subprocess."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import httpx
import pytest

from aicm_tasks.devtools.processes import free_port, wait_until
from tests.support.cli import run_cli
from tests.support.pipeline import PrivateRedis, publish
from tests.support.shards import ShardedPipeline, sharded_factory, three_primaries

pytestmark = pytest.mark.integration

__all__ = ["sharded_factory", "three_primaries"]


def cli(pipeline: ShardedPipeline, *args: str) -> subprocess.CompletedProcess[str]:
    result = run_cli(*args, env=pipeline.cli_env())
    assert "Traceback" not in result.stderr, result.stderr
    return result


def dead_letter_ids(pipeline: ShardedPipeline, shard: int) -> set[str]:
    store = pipeline.stores[shard]
    members: list[bytes] = store.client.zrange(store.keys.dlq_index, 0, -1)  # type: ignore[assignment]
    return {member.decode() for member in members}


def shard_up(port: int) -> dict[str, float]:
    """``aicm_shard_up`` by shard, from the worker's /metrics."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return {
        line.split('"')[1]: float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith("aicm_shard_up{")
    }


def test_a_shard_down_is_named_by_status_monitor_and_dlq_while_the_others_still_show(
    three_primaries: list[PrivateRedis], sharded_factory: Any
) -> None:
    pipeline: ShardedPipeline = sharded_factory([r.url for r in three_primaries])
    pipeline.spread_every_publish()
    publish(pipeline, 30, service="acme::not-yet-known", prefix="dead")
    metrics_port = free_port()
    pipeline.start_worker(AICM_METRICS_PORT=str(metrics_port))
    pipeline.wait_settled(30)
    held = [dead_letter_ids(pipeline, n) for n in range(3)]
    assert all(held), held
    wait_until(lambda: cli(pipeline, "status").returncode == 0, 60, "a healthy status")

    three_primaries[1].stop()
    # The worker's metrics say which shard is down, within a housekeeping round.
    wait_until(
        lambda: shard_up(metrics_port) == {"0": 1.0, "1": 0.0, "2": 1.0},
        30,
        "aicm_shard_up to show shard 1 down",
    )
    result = cli(pipeline, "status", "--json")
    figures = json.loads(result.stdout)
    assert result.returncode == 1, figures
    assert figures["problems"][0].startswith("shard 1 did not answer"), figures["problems"]
    assert list(figures["shards_down"]) == ["1"]
    # The other shards' figures still show: their dead letters, the worker.
    assert figures["dead_letters"] == len(held[0]) + len(held[2])
    assert len(figures["workers_alive"]) == 1, figures
    shown = cli(pipeline, "status")
    assert shown.returncode == 1 and "shard 1 did not answer" in shown.stdout, shown.stdout
    frame = cli(pipeline, "monitor", "--once")
    assert frame.returncode == 0 and "shard 1" in frame.stdout and "unhealthy" in frame.stdout

    listed = cli(pipeline, "dlq", "list", "--all", "--json")
    assert listed.returncode == 1
    assert {e["id"] for e in json.loads(listed.stdout)} == held[0] | held[2]
    assert "shard 1 did not answer" in listed.stderr, listed.stderr
    stats = cli(pipeline, "dlq", "stats", "--json")
    assert stats.returncode == 1 and json.loads(stats.stdout)["total"] == len(held[0] | held[2])
    # An id on a live shard is shown; one on the shard that is down is not
    # "not found": the operator is told where it may be.
    on_live = cli(pipeline, "dlq", "show", sorted(held[2])[0], "--json")
    assert on_live.returncode == 0, on_live.stderr
    assert json.loads(on_live.stdout)["id"] == sorted(held[2])[0]
    on_down = cli(pipeline, "dlq", "show", sorted(held[1])[0])
    assert on_down.returncode == 1
    assert "shard 1 did not answer" in on_down.stderr and "may be there" in on_down.stderr
    assert "no dead letter with id" not in on_down.stderr.split("on the shards")[-1]
    # A prefix unique over the live shards may begin an id on the dead one.
    prefix = cli(pipeline, "dlq", "replay", sorted(held[0])[0][:-1])
    assert prefix.returncode == 1 and "shard 1 did not answer" in prefix.stderr

    for server in (three_primaries[0], three_primaries[2]):
        server.stop()
    nothing = cli(pipeline, "status")
    assert nothing.returncode == 2, nothing.stdout + nothing.stderr
    assert "no shard answered" in nothing.stderr and "shard 1" in nothing.stderr
    frame = cli(pipeline, "monitor", "--once")
    assert frame.returncode == 2 and "did not answer" in frame.stdout, frame.stdout


@pytest.mark.parametrize("command", [("status",), ("monitor", "--once"), ("dlq", "show", "x")])
def test_an_unreachable_redis_cluster_is_one_clear_line_not_a_traceback(
    command: tuple[str, ...],
) -> None:
    env = {
        "AICM_REDIS_CLUSTER": "true",
        "AICM_SHARD_URLS": f"redis://127.0.0.1:{free_port()}/0",
        "AICM_API_KEY": "unused",
    }
    result = run_cli(*command, env=env)
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode in (1, 2), result.stdout + result.stderr
    assert "no node of the Redis Cluster" in result.stdout + result.stderr
