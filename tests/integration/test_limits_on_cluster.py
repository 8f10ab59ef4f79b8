"""Triggered limits on a Redis Cluster deployment: one limits set, on shard 0, written
by a real worker and heard by producer processes through redis-py's cluster pub/sub."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aicm_tasks.broker.limits import DEFAULT_SOURCE, LimitStore
from tests.support.limits import LimitsServer, outcomes_after_a_trip
from tests.support.redis_cluster import LocalRedisCluster
from tests.support.shards import ShardedPipeline, redis_cluster, sharded_factory

pytestmark = pytest.mark.integration

# Fixtures used by name below.
__all__ = ["redis_cluster", "sharded_factory"]

SERVICE = "openai::gpt-4o-mini"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def limits_server() -> Iterator[LimitsServer]:
    with LimitsServer() as server:
        yield server


def producer(pipeline: ShardedPipeline) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        **pipeline.cli_env(),
        "AICM_LIMITS_ENABLED": "true",
        # An hour between reads of the snapshot: after its first read, a producer
        # can learn of the new limit only from the pub/sub nudge.
        "AICM_LIMITS_REFRESH_MS": "3600000",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "tests.support.limits_producer", "publish", SERVICE, "0.01", "120"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )


def test_a_limit_written_by_a_worker_on_a_cluster_stops_every_producer_through_pubsub(
    redis_cluster: LocalRedisCluster, sharded_factory: Any, limits_server: LimitsServer
) -> None:
    urls = [f"redis://127.0.0.1:{node.port}/0" for node in redis_cluster.nodes[:3]]
    pipeline: ShardedPipeline = sharded_factory(urls, cluster=True, api_base=limits_server.url)
    pipeline.start_worker(
        AICM_API_KEY=limits_server.api_key,
        AICM_LIMITS_ENABLED="true",
        AICM_LIMITS_POLL_INTERVAL_S="0.5",
    )
    processes = [producer(pipeline) for _ in range(2)]
    outcomes = outcomes_after_a_trip(processes, limits_server, SERVICE)
    assert all(o["raised_at"] is not None for o in outcomes), (outcomes, pipeline.logs())
    # One set for the pipeline, under shard 0's hash tag (one slot on the cluster).
    shard_zero = pipeline.stores[0]
    assert shard_zero.keys.limits.startswith("{")
    stored = LimitStore(shard_zero.client, shard_zero.keys).read()
    assert [limit.limit_id for limit in stored[DEFAULT_SOURCE]] == ["tripped"]
