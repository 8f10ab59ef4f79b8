"""The tests' Redis Cluster: :mod:`aicm_tasks.devtools.redis_cluster`, where the
benchmark finds it too (bench/ must not import tests). Re-exported here so the
tests keep their import."""

from __future__ import annotations

from aicm_tasks.devtools.redis_cluster import (
    BUS_PORT_OFFSET,
    ClusterNode,
    LocalRedisCluster,
    free_cluster_port,
    wait_started,
)

__all__ = [
    "BUS_PORT_OFFSET",
    "ClusterNode",
    "LocalRedisCluster",
    "free_cluster_port",
    "wait_started",
]
