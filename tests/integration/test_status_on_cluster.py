"""``aicm-tasks status`` over a 3-shard Redis Cluster: each shard's RESOLVE writes its
own rate buckets and health times; status merges them into one pipeline's health."""

from __future__ import annotations

import json
from typing import Any

import pytest

from aicm_tasks.devtools.processes import stop_process, wait_until
from tests.support.cli import run_cli
from tests.support.pipeline import publish
from tests.support.redis_cluster import LocalRedisCluster
from tests.support.shards import ShardedPipeline, redis_cluster, sharded_factory

pytestmark = pytest.mark.integration

# Fixtures used by name below.
__all__ = ["redis_cluster", "sharded_factory"]


def status(pipeline: ShardedPipeline) -> tuple[int, dict[str, Any]]:
    env = {**pipeline.cli_env(), "AICM_HEALTH_WINDOW_S": "3"}
    result = run_cli("status", "--json", env=env)
    return result.returncode, json.loads(result.stdout)


def status_until(pipeline: ShardedPipeline, wanted: Any, what: str) -> dict[str, Any]:
    seen: list[tuple[int, dict[str, Any]]] = []

    def check() -> bool:
        seen.append(status(pipeline))
        return bool(wanted(*seen[-1]))

    try:
        wait_until(check, 90, what, interval_s=0.5)
    except TimeoutError:
        raise AssertionError(f"{what}; last status: {seen[-1] if seen else None}") from None
    return seen[-1][1]


def test_status_on_a_cluster_sums_the_shards_and_sees_a_track_outage_as_a_stall(
    redis_cluster: LocalRedisCluster, sharded_factory: Any
) -> None:
    urls = [f"redis://127.0.0.1:{node.port}/0" for node in redis_cluster.nodes[:3]]
    pipeline: ShardedPipeline = sharded_factory(urls, cluster=True)
    pipeline.spread_every_publish()
    pipeline.start_worker()
    publish(pipeline, 30, prefix="before")
    pipeline.wait_settled(30)
    delivered = [store.stats().get("delivered", 0) for store in pipeline.stores]
    assert sum(1 for n in delivered if n) >= 2, delivered
    figures = status_until(pipeline, lambda code, f: code == 0, "status healthy")
    # Every shard's counters and rate buckets, added up.
    assert figures["totals"]["delivered"] == 30
    assert figures["delivered_last_minute"] == 30, figures
    assert figures["last_delivered_s_ago"] is not None
    # One worker with a lease on each of the 3 shards: listed once, by its name.
    assert len(figures["workers"]) == 1 and len(figures["workers_alive"]) == 1, figures
    assert "@" in figures["workers_alive"][0]

    stop_process(pipeline.server.process)
    publish(pipeline, 30, prefix="during")
    figures = status_until(
        pipeline,
        lambda code, f: code == 1 and any("transport errors dominate" in p for p in f["problems"]),
        "status to say transport errors dominate",
    )
    assert any("none delivered for" in p for p in figures["problems"]), figures["problems"]
    assert figures["waiting"] == 30
