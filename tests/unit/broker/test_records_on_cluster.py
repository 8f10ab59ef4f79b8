"""Every atomic move of the broker on a real Redis Cluster, for tagged shards.

A script on Redis Cluster may touch only keys of the slot its declared keys
hash to; these run each script over a shard's keys through redis-py's cluster
client, including RECLAIM and SWEEP, whose keys come from what other keys hold.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import redis
from redis.cluster import RedisCluster

from aicm_tasks.broker.dead_letters import DeadLetterStore, Selection
from aicm_tasks.broker.keys import Keys, shard_keys
from aicm_tasks.broker.records import RecordStore, Resolution
from aicm_tasks.broker.replicas import ReplicaAcks
from aicm_tasks.broker.topology import connect
from aicm_tasks.producer.shards import ShardedTarget
from aicm_tasks.settings import Settings
from tests.support.redis_cluster import LocalRedisCluster
from tests.support.shards import redis_cluster

__all__ = ["redis_cluster"]


@pytest.fixture
def cluster_client(redis_cluster: LocalRedisCluster) -> Iterator[RedisCluster]:
    client = redis_cluster.client()
    yield client
    client.close()


def shard(client: RedisCluster, number: int) -> RecordStore:
    prefix = f"t-{uuid.uuid4().hex[:6]}"
    return RecordStore(client, shard_keys("q", prefix, number, tagged=True))


def slot_of(client: RedisCluster, keys: Keys) -> int:
    return int(client.keyslot(keys.queue))


def test_a_batch_is_fetched_filled_and_settled_with_every_fate_on_the_cluster(
    cluster_client: RedisCluster,
) -> None:
    store = shard(cluster_client, 1)
    store.push_many([b"a", b"b", b"c", b"d"])
    batch = store.keys.batch("w1", 0)
    assert store.fetch("w1", batch, 2, lease_s=30) is not None
    assert store.fetch("w1", batch, 1, lease_s=30, first=False) is not None
    assert store.wait_one(batch, 0.1) is not None
    resolution = Resolution(
        retries=[(0.0, b"r")], dead_letters=[("d1", '{"id": "d1", "reason": "error"}')],
        stats={"delivered": 2},
    )  # fmt: skip
    assert store.resolve("w1", batch, resolution) is True
    assert store.promote_due() == 1
    assert store.stats() == {"delivered": 2}
    assert store.depth()["queued"] == 1
    dead = DeadLetterStore.over([store])
    assert dead.get("d1")["reason"] == "error"
    assert dead.purge(Selection(ids=("d1",))) == 1


def test_an_expired_workers_batches_are_reclaimed_and_a_stray_key_swept_on_the_cluster(
    cluster_client: RedisCluster,
) -> None:
    store = shard(cluster_client, 2)
    store.push_many([b"m%d" % n for n in range(6)])
    for n in range(3):
        store.fetch("dead", store.keys.batch("dead", n), 2, lease_s=30)
    assert store.reclaim_expired("me") == 0  # the lease still runs
    cluster_client.zadd(store.keys.consumers, {"dead": 0})  # it lapsed
    assert store.reclaim_expired("me") == 6
    assert store.depth() == {"queued": 6, "scheduled": 0, "held": 0, "dead_letters": 0,
                             "workers": 0}  # fmt: skip
    # A batch key listed nowhere (a BLMOVE into a reclaimed batch, then a kill).
    stray = store.keys.batch("gone", 9)
    cluster_client.rpush(stray, b"x")
    assert store.sweep() == 1
    assert store.depth()["queued"] == 7


def test_leases_are_renewed_dropped_and_forgotten_on_the_cluster(
    cluster_client: RedisCluster,
) -> None:
    store = shard(cluster_client, 0)
    assert store.renew_lease("w", 30) > 0
    assert store.last_seen().keys() == {"w"}
    assert store.drop_lease("w") is True
    assert store.forget_unseen(-1) == 1
    assert store.server_client().ping()


def test_a_dead_letter_is_replayed_to_its_own_shard(cluster_client: RedisCluster) -> None:
    stores = [shard(cluster_client, n) for n in range(3)]
    assert len({slot_of(cluster_client, s.keys) for s in stores}) == 3
    entry = '{"id": "x", "reason": "error", "record": {"response_id": "x"}}'
    stores[2].push(b"{}")
    batch = stores[2].keys.batch("w", 0)
    stores[2].fetch("w", batch, 1, lease_s=30)
    stores[2].resolve("w", batch, Resolution(dead_letters=[("x", entry)]))
    dead = DeadLetterStore.over(stores)
    assert dead.count() == 1
    assert dead.replay(Selection(all=True)) == ["x"]
    assert [s.depth()["queued"] for s in stores] == [0, 0, 1]


def test_a_publish_counts_once_a_replica_acknowledged_it(cluster_client: RedisCluster) -> None:
    store = shard(cluster_client, 0)
    acked = RecordStore(cluster_client, store.keys, ReplicaAcks(1, 0.5))
    acked.push(b"a")
    acked.push_many([b"b", b"c"])
    acked.schedule([(1.0, b"d")])
    batch = store.keys.batch("w", 0)
    acked.fetch("w", batch, 3, lease_s=30)
    assert acked.resolve("w", batch, Resolution(stats={"delivered": 3})) is True
    assert store.stats() == {"delivered": 3}


def test_a_publish_too_few_replicas_acknowledged_fails_and_goes_to_another_shard(
    cluster_client: RedisCluster,
) -> None:
    # Each primary of the test cluster has one replica: asking for two never succeeds.
    starved = RecordStore(cluster_client, shard(cluster_client, 0).keys, ReplicaAcks(2, 0.05))
    with pytest.raises(redis.TimeoutError, match="1 of 2 replicas acknowledged"):
        starved.push(b"x")
    other = RecordStore(cluster_client, shard(cluster_client, 1).keys, ReplicaAcks(1, 0.5))
    target = ShardedTarget([starved, other])
    for _ in range(4):
        target.push_many([b"y"])
    assert other.depth()["queued"] == 4


def test_every_primary_is_listed_with_the_shards_it_serves(
    redis_cluster: LocalRedisCluster,
) -> None:
    urls = tuple(f"redis://127.0.0.1:{n.port}/0" for n in redis_cluster.primaries())
    topology = connect(Settings(shard_urls=urls, redis_cluster=True, shards=6))
    placed = topology.shards_per_server()
    assert len(placed) == 3
    assert sorted(i for shards in placed.values() for i in shards) == list(range(6))
    for server, shards in placed.items():
        port = int(server.rsplit(":", 1)[1])
        assert all(
            redis_cluster.node_of(topology.shards[i].store.keys.queue).port == port for i in shards
        )
    topology.close()
