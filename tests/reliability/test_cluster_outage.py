"""A whole Redis Cluster down (every node killed) then back: the worker survives
it. redis-py's cluster client raises ``RedisClusterException``, which is not a
``RedisError``, when no node of the cluster answers; a worker thread that caught
only ``RedisError`` died of it and never renewed its lease again."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aicm_tasks.devtools.processes import wait_until
from tests.support.pipeline import publish
from tests.support.redis_cluster import LocalRedisCluster
from tests.support.shards import ShardedPipeline, sharded_factory

pytestmark = pytest.mark.reliability

__all__ = ["sharded_factory"]


@pytest.fixture
def own_cluster(tmp_path: Path) -> Iterator[LocalRedisCluster]:
    """A cluster of this test's own: it kills every node (the shared one must live)."""
    cluster = LocalRedisCluster(tmp_path / "cluster")
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def full_logs(pipeline: ShardedPipeline) -> str:
    """Every worker log whole (Pipeline.logs keeps the end of each)."""
    return "\n".join(p.read_text(errors="replace") for p in pipeline.log_dir.glob("*.log"))


def seen_s_ago(pipeline: ShardedPipeline) -> float:
    """How long ago the worker last renewed its lease, on the slowest shard."""
    store = pipeline.stores[0]
    now = store.server_time()
    return max(now - min(s.last_seen().values()) for s in pipeline.stores)


def test_a_worker_outlives_its_whole_redis_cluster_going_down_and_coming_back(
    own_cluster: LocalRedisCluster, sharded_factory: Any
) -> None:
    pipeline: ShardedPipeline = sharded_factory([n.url for n in own_cluster.nodes], cluster=True)
    pipeline.spread_every_publish()
    pipeline.start_worker()
    before = publish(pipeline, 30, prefix="before")
    pipeline.wait_settled(30)

    for node in own_cluster.nodes:
        node.kill()
    # Housekeeping (a round a second) meets the outage before the nodes return:
    # it logs the error and goes on, or (the bug) its thread dies of it.
    wait_until(
        lambda: any(
            mark in full_logs(pipeline) for mark in ("in housekeeping", "aicm-housekeeping")
        ),
        30,
        "housekeeping to meet the outage",
    )
    for node in own_cluster.nodes:
        node.start(own_cluster.appendonly)
    wait_until(own_cluster.healthy, 60, "the cluster back")

    after = publish(pipeline, 30, prefix="after")
    pipeline.wait_settled(60, timeout_s=120)
    assert pipeline.server.response_ids() == set(before) | set(after)
    # The lease is renewed again on every shard: housekeeping lives.
    wait_until(lambda: seen_s_ago(pipeline) < 3, 60, "the worker's lease renewed again")
    # No thread died (Celery logs a dying thread's stderr a line at a time).
    assert "Exception in thread" not in full_logs(pipeline)
