"""The test cluster's own nodes: a port another Redis took between its choice and
the node's start is never joined to the cluster; the node moves to other ports."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from aicm_tasks.devtools import redis_cluster
from tests.support.pipeline import PrivateRedis
from tests.support.redis_cluster import LocalRedisCluster

pytestmark = pytest.mark.integration


@pytest.fixture
def squatter(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A standalone Redis of someone else's, on the port the cluster draws first."""
    server = PrivateRedis(tmp_path / "squatter")
    server.start()
    yield server
    server.stop()


def test_a_node_whose_port_another_redis_took_moves_to_another_port(
    tmp_path: Path, squatter: PrivateRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    draw = redis_cluster.free_cluster_port
    drawn: list[int] = []

    def taken_first(taken: set[int]) -> int:
        # The squatter's port looked free when drawn (a race), then was taken.
        drawn.append(squatter.port if not drawn else draw(taken))
        return drawn[-1]

    monkeypatch.setattr(redis_cluster, "free_cluster_port", taken_first)
    cluster = LocalRedisCluster(tmp_path / "cluster")
    try:
        cluster.start()
        assert drawn[0] == squatter.port
        assert squatter.port not in [node.port for node in cluster.nodes]
        assert len(cluster.nodes) == redis_cluster.NODES and cluster.healthy()
        # The squatter was left alone, and is no cluster node.
        assert redis.Redis(port=squatter.port).info("cluster")["cluster_enabled"] == 0
    finally:
        cluster.stop()
