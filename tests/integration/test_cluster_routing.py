"""Publishes sent straight to a shard's primary on a real Redis Cluster follow
the slot when an operator moves it and when a failover promotes a replica, and
lose nothing: every publish that returned is in the queue, exactly.

The routing decisions themselves, off the wire: tests/unit/broker/test_cluster_records.py.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, cast

import pytest
import redis

from aicm_tasks.broker.cluster_records import ClusterRecordStore
from aicm_tasks.broker.topology import Topology
from aicm_tasks.devtools.processes import wait_until
from aicm_tasks.producer.publisher import producer_topology
from aicm_tasks.producer.shards import ShardedTarget
from aicm_tasks.settings import Settings
from tests.conftest import TEST_REDIS_URL
from tests.support.redis_cluster import LocalRedisCluster
from tests.support.shards import redis_cluster

pytestmark = pytest.mark.integration

__all__ = ["redis_cluster"]

#: Publishes to wait for in each phase of a run (before, during, after a change).
PHASE = 200


def topology(cluster: LocalRedisCluster, run: str, **options: Any) -> Topology:
    """Shards on ``cluster`` with the producer's clients (half the publish budget
    an attempt, one retry)."""
    settings = Settings(
        broker_url=TEST_REDIS_URL,
        shard_urls=tuple(f"redis://127.0.0.1:{n.port}/0" for n in cluster.primaries()),
        redis_cluster=True,
        queue=f"aicm.route.{run}",
        key_prefix=f"aicm-route-{run}",
        **options,
    )
    return producer_topology(settings)


@dataclass
class Producer:
    """Publishes numbered messages with ``push`` in a thread until stopped; a
    message counts as published only once ``push`` returned."""

    push: Any
    published: list[bytes] = field(default_factory=list)
    failed: list[bytes] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        n = 0
        while not self.stop.is_set():
            message = b"m%d" % n
            try:
                self.push(message)
            except redis.RedisError:
                self.failed.append(message)
            else:
                self.published.append(message)
            n += 1

    def wait_for_more(self, what: str) -> None:
        at = len(self.published)
        wait_until(lambda: len(self.published) >= at + PHASE, 60, f"{PHASE} publishes {what}")

    def finish(self) -> None:
        self.stop.set()
        self.thread.join(30)
        assert not self.thread.is_alive()


def errors_of(node: Any) -> dict[str, int]:
    """How many of each error the node answered (INFO errorstats: ASK, MOVED, ...)."""
    stats = node.client.info("errorstats")
    return {name.removeprefix("errorstat_"): int(v["count"]) for name, v in stats.items()}


@pytest.fixture
def run_id() -> Iterator[str]:
    yield uuid.uuid4().hex[:8]


def test_a_slot_moved_to_another_primary_while_publishing_loses_nothing_and_is_followed(
    redis_cluster: LocalRedisCluster, run_id: str
) -> None:
    shards = topology(redis_cluster, run_id, shards=1)
    store = shards.stores[0]
    assert isinstance(store, ClusterRecordStore)
    slot = store.route.slot
    source = redis_cluster.node_of(store.keys.queue)
    target = next(p for p in redis_cluster.primaries() if p is not source)
    before = errors_of(source)
    producer = Producer(store.push)
    try:
        producer.wait_for_more("before the move")
        # While the keys are on the target and the slot still the source's,
        # every publish is answered ASK and followed there.
        redis_cluster.move_slot(slot, target, halfway=lambda: producer.wait_for_more("mid-move"))
        producer.wait_for_more("after the move")
        producer.finish()
        # With one shard, a publish that failed would have gone to the spool: none did.
        assert producer.failed == []
        queued = target.client.lrange(store.keys.queue, 0, -1)
        assert sorted(queued) == sorted(producer.published)
        assert source.client.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) == 0
        # Followed: publishes go to the new primary, not redirected each time.
        assert store.route.server().connection_pool.connection_kwargs["port"] == target.port
        after = errors_of(source)
        assert after.get("ASK", 0) - before.get("ASK", 0) >= PHASE
        assert 0 < after.get("MOVED", 0) - before.get("MOVED", 0) < 10
    finally:
        producer.finish()
        store.client.delete(store.keys.queue)
        redis_cluster.move_slot(slot, source)
        shards.close()


@pytest.mark.reliability
def test_a_primary_killed_while_publishing_loses_nothing_and_its_replica_is_followed(
    redis_cluster: LocalRedisCluster, run_id: str
) -> None:
    # Replica acknowledgement: a publish that returned is on the replica that
    # the failover promotes (without it, what the primary had not yet sent its
    # replica is lost: tests/reliability/test_cluster_failover.py counts it).
    acked = topology(redis_cluster, run_id, replica_acks=1, replica_ack_timeout_s=0.2)
    # Publishes without acknowledgement, on a cluster client whose slot map is
    # the one from before the failover.
    stale = topology(redis_cluster, run_id)
    shard0 = acked.stores[0]
    victim = redis_cluster.node_of(shard0.keys.queue)
    replica = redis_cluster.replica_of(victim)
    target = ShardedTarget(acked.stores)
    producer = Producer(lambda message: target.push_many([message]))
    try:
        producer.wait_for_more("before the kill")
        victim.kill()
        redis_cluster.wait_failover(victim)
        producer.wait_for_more("after the failover")
        producer.finish()
        # What failed while no shard took it (the cluster refuses writes until
        # the failover ends) is what the spool would hold: its drain now.
        target.push_many(producer.failed)
        published = set(producer.published) | set(producer.failed)
        # The first publish on the stale map finds the promoted replica at once.
        stale.stores[0].push(b"stale-map")
        # So does the acked shard's first command. (On a loaded machine the
        # failover can outlast the publishes above, which then all went to other
        # shards while this one was skipped as down, leaving its map unread. A
        # publish cannot show it: WAIT has no replica left to acknowledge.)
        assert isinstance(shard0, ClusterRecordStore)
        shard0.route.run(lambda client: client.ping())
        for store in (shard0, stale.stores[0]):
            assert isinstance(store, ClusterRecordStore)
            assert store.route.server().connection_pool.connection_kwargs["port"] == replica.port
        reader = redis_cluster.client()
        queued: set[bytes] = set()
        for store in acked.stores:
            queued |= set(cast(list[bytes], reader.lrange(store.keys.queue, 0, -1)))
        # Nothing lost, nothing unknown (a publish whose acknowledgement timed
        # out may be in two shards: the server dedupes it).
        assert queued == published | {b"stale-map"}
        reader.close()
    finally:
        producer.finish()
        victim.start(redis_cluster.appendonly)
        wait_until(redis_cluster.healthy, 60, "the cluster to be whole again")
        wait_until(redis_cluster.replicas_in_sync, 60, "the rejoined replica's sync")
        cleaner = redis_cluster.client()
        for store in acked.stores:
            cleaner.delete(store.keys.queue)
        cleaner.close()
        acked.close()
        stale.close()
