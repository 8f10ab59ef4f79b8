"""Sharded pipelines for tests: a real Redis Cluster (session-scoped) or several
private standalone primaries, with the same real worker subprocesses and local
server as :mod:`tests.support.pipeline`."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis

from aicm_tasks.broker.dead_letters import DeadLetterStore
from aicm_tasks.broker.keys import dead_lettered_by_reason
from aicm_tasks.broker.records import RecordStore
from aicm_tasks.broker.topology import connect
from aicm_tasks.devtools.processes import wait_until
from aicm_tasks.producer.shards import ShardedTarget
from aicm_tasks.settings import Settings
from tests.conftest import TEST_REDIS_URL
from tests.support.pipeline import LocalServer, Pipeline, PrivateRedis
from tests.support.redis_cluster import LocalRedisCluster


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRedisCluster]:
    """A real 3-primary / 3-replica Redis Cluster on loopback, for the whole session.

    Skips without redis-server/redis-cli on a laptop; fails under CI, which
    installs them (.ci/run)."""
    missing = [name for name in ("redis-server", "redis-cli") if shutil.which(name) is None]
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"CI needs {' and '.join(missing)} for the Redis Cluster tests")
        pytest.skip(f"{' and '.join(missing)} not installed: no Redis Cluster")
    cluster = LocalRedisCluster(tmp_path_factory.mktemp("redis-cluster"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@dataclass
class ShardedPipeline(Pipeline):
    """A pipeline whose records live in several shards; Celery keeps the test Redis."""

    stores: list[RecordStore] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.stores = connect(self.settings).stores
        # What the base class reads (worker registration) is the first shard's.
        self.store = self.stores[0]
        self.client = self.store.client  # type: ignore[assignment]
        self.dead_letters = DeadLetterStore.over(self.stores)

    def shard_env(self) -> dict[str, str]:
        env = {"AICM_SHARD_URLS": ",".join(self.settings.shard_urls)}
        if self.settings.redis_cluster:
            env["AICM_REDIS_CLUSTER"] = "true"
        if self.settings.shards is not None:
            env["AICM_SHARDS"] = str(self.settings.shards)
        if self.settings.replica_acks:
            env["AICM_REPLICA_ACKS"] = str(self.settings.replica_acks)
            env["AICM_REPLICA_ACK_TIMEOUT_S"] = str(self.settings.replica_ack_timeout_s)
        return env

    def worker_env(self, **extra: str) -> dict[str, str]:
        return {**super().worker_env(), **self.shard_env(), **extra}

    def cli_env(self) -> dict[str, str]:
        return {**super().cli_env(), **self.shard_env()}

    def spread_every_publish(self) -> None:
        """Publish each record to the next shard, so that a burst shorter than a
        producer's run on one shard (``SHARD_RUN_S``) still reaches every shard."""
        target = self.track.publisher.target
        assert isinstance(target, ShardedTarget)
        target.run_s = 0.0

    def stats(self) -> dict[str, int]:
        """Every shard's counters, added up."""
        total: dict[str, int] = {}
        for store in self.stores:
            for name, count in store.stats().items():
                total[name] = total.get(name, 0) + count
        return total

    def settled(self) -> int:
        stats = self.stats()
        return stats.get("delivered", 0) + sum(dead_lettered_by_reason(stats).values())

    def wait_drained(self, timeout_s: float = 120) -> None:
        def empty() -> bool:
            for store in self.stores:
                depth = store.depth()
                if depth["queued"] or depth["scheduled"] or depth["held"]:
                    return False
            return True

        wait_until(empty, timeout_s, "every shard to drain", interval_s=0.1)

    def delivered_per_shard(self) -> list[int]:
        return [store.stats().get("delivered", 0) for store in self.stores]

    def clear(self) -> None:
        """Remove this pipeline's keys from every shard (the cluster outlives tests)."""
        for store in self.stores:
            try:
                for key in [
                    store.keys.queue,
                    *store.client.scan_iter(match=f"{store.keys.prefix}:*"),
                ]:
                    store.client.delete(key)
            except redis.RedisError:
                pass


@pytest.fixture
def sharded_factory(
    real_redis: redis.Redis, local_server: LocalServer, tmp_path: Path
) -> Iterator[Any]:
    """Makes sharded pipelines: ``make(shard_urls, cluster=..., shards=..., api_base=...,
    **settings)``."""
    made: list[ShardedPipeline] = []

    def make(
        shard_urls: list[str],
        *,
        cluster: bool = False,
        shards: int | None = None,
        api_base: str | None = None,
        **options: Any,
    ) -> ShardedPipeline:
        run = uuid.uuid4().hex[:6]
        settings = Settings(
            broker_url=TEST_REDIS_URL,
            shard_urls=tuple(shard_urls),
            redis_cluster=cluster,
            shards=shards,
            queue=f"aicm.test.{run}",
            key_prefix=f"aicm-test-{run}",
            **options,
        )
        pipeline = ShardedPipeline(settings, local_server, api_base or local_server.url, tmp_path)
        made.append(pipeline)
        return pipeline

    yield make
    for pipeline in made:
        pipeline.stop()
        pipeline.clear()


@pytest.fixture
def three_primaries(tmp_path: Path) -> Iterator[list[PrivateRedis]]:
    """Three standalone redis-servers of the test's own (AOF on)."""
    servers = [PrivateRedis(tmp_path / f"primary-{n}") for n in range(3)]
    for server in servers:
        server.start()
    yield servers
    for server in servers:
        server.stop()
