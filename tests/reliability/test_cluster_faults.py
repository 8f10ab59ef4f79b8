"""The fault suite's core on a real Redis Cluster with 3 shards: /track down,
then poison records, with exact accounting (SIGKILL: tests/integration/test_shards.py,
a primary killed: test_cluster_failover.py)."""

from __future__ import annotations

from typing import Any

from aicm_tasks.broker.dead_letters import Selection
from tests.support.accounting import account
from tests.support.faults import FaultProxy, hold
from tests.support.pipeline import publish
from tests.support.redis_cluster import LocalRedisCluster
from tests.support.shards import ShardedPipeline, redis_cluster, sharded_factory

__all__ = ["redis_cluster", "sharded_factory"]


def test_track_down_then_poison_records_on_the_cluster_lose_nothing(
    redis_cluster: LocalRedisCluster, sharded_factory: Any
) -> None:
    urls = [f"redis://127.0.0.1:{n.port}/0" for n in redis_cluster.primaries()]
    probe: ShardedPipeline = sharded_factory(urls, cluster=True)
    with FaultProxy(probe.server.url) as proxy:
        pipeline: ShardedPipeline = sharded_factory(urls, cluster=True, api_base=proxy.url)
        for _ in range(2):
            pipeline.start_worker(AICM_RETRY_MAX_S="2")
        proxy.set("503")
        ids = publish(pipeline, 1500, prefix="down")
        hold(5)
        assert pipeline.stats().get("delivered", 0) == 0  # nothing got through
        proxy.set("poison")
        ids += publish(pipeline, 600, prefix="after")
        poison = [
            pipeline.track.delay(
                "openai::gpt-4o-mini", {"poison": True}, response_id=f"poison-{n}"
            ).id
            for n in range(3)
        ]
        pipeline.wait_settled(len(ids) + len(poison), timeout_s=180)
        assert proxy.state.counts.get("503", 0) > 0
    pipeline.wait_drained()
    result = account(pipeline, "cluster: /track down, then poison", set(ids) | set(poison))
    assert result.lost == 0, result
    assert result.dead_lettered == 3 and result.delivered == len(ids)
    entries = pipeline.dead_letters.list(Selection(all=True))
    assert {e["id"] for e in entries} == set(poison)
    assert {e["reason"] for e in entries} == {"rejected"}
