"""Records over several shards, on a real Redis Cluster and on three standalone
primaries: real workers, the real local server, exact accounting."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest
import redis

from aicm_tasks.devtools.processes import wait_until
from aicm_tasks.producer.spool import Spool
from tests.support.cli import run_cli
from tests.support.pipeline import PrivateRedis, in_background, publish
from tests.support.redis_cluster import LocalRedisCluster
from tests.support.sdk_queue import write_sdk_queue
from tests.support.shards import ShardedPipeline, redis_cluster, sharded_factory, three_primaries

pytestmark = pytest.mark.integration

__all__ = ["redis_cluster", "sharded_factory", "three_primaries"]


def cluster_urls(cluster: LocalRedisCluster) -> list[str]:
    return [f"redis://127.0.0.1:{node.port}/0" for node in cluster.nodes[:3]]


def publish_many(pipeline: ShardedPipeline, count: int, prefix: str) -> list[str]:
    """``count`` records through track_many, in calls of 100 (one shard per call)."""
    ids: list[str] = []
    for start in range(0, count, 100):
        ids += pipeline.track.many(
            [
                {"service_key": "openai::gpt-4o-mini", "usage": {"input_tokens": n},
                 "response_id": f"{prefix}{n}"}
                for n in range(start, min(start + 100, count))
            ]
        )  # fmt: skip
    return ids


def assert_exactly_delivered(pipeline: ShardedPipeline, ids: list[str]) -> None:
    pipeline.wait_settled(len(ids))
    pipeline.wait_drained()
    assert pipeline.server.response_ids() == set(ids)
    assert pipeline.stats()["delivered"] == len(ids)
    assert pipeline.dead_letters.count() == 0
    # Every shard carried its share: each one was published to and consumed.
    assert all(n > 0 for n in pipeline.delivered_per_shard()), pipeline.delivered_per_shard()


def test_records_spread_over_three_cluster_shards_arrive_once_each(
    redis_cluster: LocalRedisCluster, sharded_factory: Any
) -> None:
    pipeline: ShardedPipeline = sharded_factory(cluster_urls(redis_cluster), cluster=True)
    assert len(pipeline.stores) == 3
    pipeline.start_worker()
    pipeline.start_worker()
    ids = publish(pipeline, 1500) + publish_many(pipeline, 1500, "many")
    assert_exactly_delivered(pipeline, ids)


def test_records_spread_over_three_standalone_primaries_arrive_once_each(
    three_primaries: list[PrivateRedis], sharded_factory: Any
) -> None:
    pipeline: ShardedPipeline = sharded_factory([r.url for r in three_primaries])
    pipeline.start_worker()
    pipeline.start_worker()
    ids = publish(pipeline, 1500) + publish_many(pipeline, 1500, "many")
    assert_exactly_delivered(pipeline, ids)
    # Each primary holds exactly its own shard's keys.
    for server, store in zip(three_primaries, pipeline.stores, strict=True):
        assert store.keys.shard == three_primaries.index(server)


def test_dead_letters_of_every_shard_are_listed_shown_and_replayed_as_one_by_the_cli(
    redis_cluster: LocalRedisCluster, sharded_factory: Any
) -> None:
    pipeline: ShardedPipeline = sharded_factory(cluster_urls(redis_cluster), cluster=True)
    pipeline.spread_every_publish()
    unknown = publish(pipeline, 30, service="acme::not-yet-known", prefix="dead")
    pipeline.start_worker()
    pipeline.wait_settled(30)
    holding = [store.client.zcard(store.keys.dlq_index) for store in pipeline.stores]
    assert sum(holding) == 30 and sum(1 for n in holding if n) >= 2, holding
    env = pipeline.cli_env()
    listed = run_cli("dlq", "list", "--all", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    assert {e["id"] for e in json.loads(listed.stdout)} == set(unknown)
    # Show by id, whichever shard holds it, without naming the shard.
    for dead_id in (unknown[0], unknown[-1]):
        shown = run_cli("dlq", "show", dead_id, "--json", env=env)
        assert shown.returncode == 0, shown.stderr
        assert json.loads(shown.stdout)["reason"] == "service_key_unknown"
    # A prefix is judged over every shard: "dead" begins ids in several.
    ambiguous = run_cli("dlq", "show", "dead", env=env)
    assert ambiguous.returncode == 1, ambiguous.stdout + ambiguous.stderr
    assert "give more of the id" in ambiguous.stderr
    stats = run_cli("dlq", "stats", "--json", env=env)
    assert json.loads(stats.stdout)["total"] == 30
    status = run_cli("status", "--json", env=env)
    figures = json.loads(status.stdout)
    assert figures["dead_letters"] == 30, figures
    assert set(figures["redis_settings"]["shards"]) == {"0", "1", "2"}
    shown = run_cli("status", env=env)
    assert "noeviction" in shown.stdout, shown.stdout + shown.stderr
    pipeline.server.learn("acme::not-yet-known")
    replayed = run_cli("dlq", "replay", "--all", env=env)
    assert replayed.returncode == 0, replayed.stderr
    pipeline.wait_drained()
    wait_until(lambda: pipeline.stats().get("delivered", 0) == 30, 60, "30 replayed delivered")
    assert pipeline.server.response_ids() == set(unknown)
    assert pipeline.dead_letters.count() == 0


def test_a_worker_killed_mid_run_loses_nothing_on_the_cluster(
    redis_cluster: LocalRedisCluster, sharded_factory: Any
) -> None:
    pipeline: ShardedPipeline = sharded_factory(cluster_urls(redis_cluster), cluster=True)
    victim = pipeline.start_worker(AICM_BATCH_SIZE="50")
    pipeline.start_worker(AICM_BATCH_SIZE="50")
    producer, ids = in_background(publish, pipeline, 6000)
    wait_until(lambda: pipeline.settled() > 1000, 120, "delivery under way")
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait(10)
    producer.join()
    assert len(ids) == 6000
    # The survivor reclaims the victim's batches on every shard once its leases lapse.
    pipeline.wait_drained(timeout_s=180)
    assert pipeline.server.response_ids() == set(ids)
    assert pipeline.dead_letters.count() == 0
    stats = pipeline.server.stats()
    assert stats["events"] == 6000
    assert stats["received"] == 6000 + stats["duplicates"]


def test_a_shard_whose_primary_is_down_leaves_publishing_to_the_others(
    three_primaries: list[PrivateRedis], sharded_factory: Any
) -> None:
    pipeline: ShardedPipeline = sharded_factory([r.url for r in three_primaries])
    pipeline.start_worker()
    down = three_primaries[1]
    down.stop()
    ids = publish(pipeline, 900, prefix="while-down") + publish_many(pipeline, 600, "many-down")
    spool = pipeline.track.publisher.spool
    assert spool is not None and not spool.has_records()  # nothing had to wait locally
    # The two live shards deliver everything meanwhile; the dead one holds nothing.
    wait_until(lambda: pipeline.server.response_ids() >= set(ids), 120, "all delivered")
    down.start()
    more = publish(pipeline, 300, prefix="after")
    pipeline.wait_settled(len(ids) + len(more))
    pipeline.wait_drained()
    assert pipeline.server.response_ids() == set(ids) | set(more)
    assert pipeline.dead_letters.count() == 0


def test_the_sdk_queue_is_imported_once_onto_a_cluster_and_delivered(
    redis_cluster: LocalRedisCluster, sharded_factory: Any, tmp_path: Path
) -> None:
    pipeline: ShardedPipeline = sharded_factory(cluster_urls(redis_cluster), cluster=True)
    sdk = write_sdk_queue(tmp_path / "sdk")
    first = run_cli("import-sqlite", str(sdk.path), "--json", env=pipeline.cli_env())
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["published"] == 7
    # Remembered in the same transaction, in the same slot: a second run publishes nothing.
    again = run_cli("import-sqlite", str(sdk.path), "--json", env=pipeline.cli_env())
    assert json.loads(again.stdout)["published"] == 0
    pipeline.start_worker()
    pipeline.wait_settled(7)
    pipeline.wait_drained()
    assert len(pipeline.server.response_ids()) == 7


def test_the_demo_runs_over_the_shards(
    three_primaries: list[PrivateRedis], sharded_factory: Any
) -> None:
    pipeline: ShardedPipeline = sharded_factory([r.url for r in three_primaries])
    env = {**pipeline.shard_env(), "AICM_BROKER_URL": pipeline.settings.broker_url}
    done = run_cli("demo", "--records", "300", "--json", env=env)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    dead = sum(summary["dead_lettered"].values())
    assert summary["delivered"] + dead == summary["published"] == 300
    assert summary["broker"].startswith("3 shards on ")
    # It removes its keys from every shard at the end.
    assert all(redis.Redis.from_url(r.url).dbsize() == 0 for r in three_primaries)


def test_spool_drain_pushes_to_the_shards_that_answer(
    three_primaries: list[PrivateRedis], sharded_factory: Any, tmp_path: Path
) -> None:
    pipeline: ShardedPipeline = sharded_factory([r.url for r in three_primaries])
    spool_dir = tmp_path / "spool"
    settings = pipeline.settings.model_copy(update={"spool_dir": spool_dir})
    spool = Spool.for_settings(settings)
    for chunk in range(5):
        spool.append_many([b'{"n":%d,"chunk":%d}' % (n, chunk) for n in range(1000)])
    three_primaries[0].stop()
    env = {**pipeline.cli_env(), "AICM_SPOOL_DIR": str(spool_dir)}
    done = run_cli("spool", "drain", "--json", env=env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"pushed": 5000}
    queued = [store.depth()["queued"] for store in pipeline.stores[1:]]
    assert sum(queued) == 5000 and all(queued), queued
    assert not spool.has_records()
