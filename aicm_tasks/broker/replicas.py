"""Replica acknowledgement: a write followed by ``WAIT`` on the same connection.

Redis replication is asynchronous: a primary that dies before its replica got
a write loses it, and a failover promotes the replica without it. With
``AICM_REPLICA_ACKS=n`` a publish counts only once ``n`` replicas acknowledged
it (``WAIT n <ms>``), so a record acknowledged to the producer survives the
primary's death; one not acknowledged in time is published again elsewhere
(another shard, or the spool): perhaps twice, never lost. A settle waits the
same way, which keeps a failover from redelivering what was settled.

``WAIT`` counts the writes of the connection that sends it, so the write and
the ``WAIT`` go in one pipeline, on one connection to the one server that holds
the shard (on a cluster: the primary serving its slot now).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis
from redis.cluster import RedisCluster


@dataclass(frozen=True, slots=True)
class ReplicaAcks:
    """How many replicas must acknowledge a write, and how long to wait for them."""

    replicas: int = 0
    timeout_s: float = 0.2

    @property
    def enabled(self) -> bool:
        return self.replicas > 0


def write_acknowledged(
    client: redis.Redis | RedisCluster,
    server: redis.Redis,
    acks: ReplicaAcks,
    write: Callable[[Any], None],
) -> tuple[list[Any], int]:
    """Run ``write(pipeline)`` then ``WAIT`` on ``server`` (the shard's one Redis);
    returns the write's results and how many replicas acknowledged it.

    On a cluster, an error (the primary died, the slot moved) makes ``client``
    read the slot map again before it propagates, so the next try finds the
    new primary.
    """
    try:
        with server.pipeline(transaction=False) as pipe:
            write(pipe)
            timeout_ms = max(1, int(acks.timeout_s * 1000))
            pipe.execute_command("WAIT", acks.replicas, timeout_ms)  # type: ignore[no-untyped-call]
            *results, acknowledged = pipe.execute()
    except redis.RedisError:
        if isinstance(client, RedisCluster):
            _refresh_slots(client)
        raise
    return results, int(acknowledged)


def _refresh_slots(client: RedisCluster) -> None:
    """Ask the cluster for its slot map again (best effort: it may be mid-failover)."""
    with contextlib.suppress(redis.RedisError, redis.exceptions.RedisClusterException):
        client.nodes_manager.initialize()
