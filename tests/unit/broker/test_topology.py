"""Which shard lives where, read from settings alone, and the key names each gets."""

from __future__ import annotations

import pytest
import redis

from aicm_tasks.broker.keys import Keys, shard_keys
from aicm_tasks.broker.topology import DEFAULT_CLUSTER_SHARDS, connect, layout_of, uneven
from aicm_tasks.settings import Settings

A, B, C = "redis://a:6379/0", "redis://b:6379/0", "redis://c:6379/0"


def test_one_standalone_redis_keeps_todays_key_names() -> None:
    layout = layout_of(Settings(broker_url=A))
    (place,) = layout.places
    assert place.url == A
    assert place.keys == Keys("aicm.tracking", "aicm", 0)
    assert not layout.tagged


def test_several_primaries_get_one_tagged_shard_each_in_turn() -> None:
    layout = layout_of(Settings(broker_url=A, shard_urls=(A, B, C), shards=6))
    assert [p.url for p in layout.places] == [A, B, C, A, B, C]
    assert layout.places[4].keys.queue == "aicm.tracking:{aicm:4}"
    assert layout.places[4].keys.stats == "{aicm:4}:stats"
    assert layout.tagged


def test_a_cluster_defaults_to_three_tagged_shards_on_one_client() -> None:
    settings = Settings(shard_urls=(A, B), redis_cluster=True)
    layout = layout_of(settings)
    assert len(layout.places) == DEFAULT_CLUSTER_SHARDS
    assert layout.cluster and layout.tagged
    assert {p.url for p in layout.places} == {A}


def test_two_shards_on_one_redis_are_tagged_so_they_never_share_keys() -> None:
    layout = layout_of(Settings(broker_url=A, shards=2))
    first, second = (p.keys for p in layout.places)
    assert first.queue != second.queue and first.dlq != second.dlq


@pytest.mark.parametrize("shard", [0, 1, 7])
def test_every_key_of_a_tagged_shard_hashes_to_one_slot(shard: int) -> None:
    keys = shard_keys("aicm.tracking", "aicm", shard, tagged=True)
    names = [keys.queue, keys.scheduled, keys.consumers, keys.dlq, keys.dlq_index, keys.stats,
             keys.seen, keys.errors, keys.rate(3), keys.held("h:1:x"), keys.batch("h:1:x", 9)]  # fmt: skip
    tag = "{aicm:%d}" % shard  # noqa: UP031 - braces are the point
    # Redis Cluster hashes the text inside the first {...}: the same in every name.
    assert all(name[name.index("{") : name.index("}") + 1] == tag for name in names)


def test_standalone_shards_on_one_server_share_its_client() -> None:
    topology = connect(Settings(broker_url=A, shard_urls=(A, B), shards=4))
    assert len(topology.shards) == 4
    assert len(topology.clients) == 2
    assert all(isinstance(c, redis.Redis) for c in topology.clients)
    assert topology.shards[2].store.client is topology.shards[0].store.client
    topology.close()


def test_the_shards_each_server_holds_are_listed_and_an_uneven_spread_is_seen() -> None:
    topology = connect(Settings(broker_url=A, shard_urls=(A, B), shards=4))
    placed = topology.shards_per_server()
    assert placed == {"a:6379": [0, 2], "b:6379": [1, 3]}
    assert not uneven(placed)
    assert uneven({"a:1": [0, 1, 2], "b:1": [3], "c:1": []})
    topology.close()
