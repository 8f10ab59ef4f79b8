"""Scenario 9: a 3-primary Redis Cluster beside one standalone Redis (issue 15).

Both are fresh processes of the same ``redis-server`` binary started here, no
AOF, no RDB: one standalone on a free port, and a cluster of 3 primaries with a
replica each (``redis-cli --cluster create ... --cluster-replicas 1``, as
:class:`aicm_tasks.devtools.redis_cluster.LocalRedisCluster` builds it). Three
deployments, alternating within each run:

* ``single``: ``AICM_BROKER_URL`` on the standalone Redis (today's default);
* ``cluster``: ``AICM_SHARD_URLS`` = the three primaries, ``AICM_REDIS_CLUSTER=true``
  (3 shards; Celery keeps the bench's own Redis, as a cluster deployment does);
* ``acks``: the same with ``AICM_REPLICA_ACKS=1`` (each publish and settle waits
  for the shard's replica).

Figures, as in ``publish`` and ``drain``: ``track.delay`` p50/p99 in a fresh
producer process; one default worker's drain of a backlog filled with
``track_many`` lists of 1,000 (spread over the shards in turn), ready→all.
Beside them, from ``INFO cpu`` (``used_cpu_sys + used_cpu_user``) of each
primary before and after: Redis CPU per record on each shard, for the publish
(records counted by ``LLEN`` of each shard's queue) and for the drain (records
counted by each shard's ``delivered``), and the aggregate that projects for 3,
6 and 12 primaries at one core each. The key prefix is chosen so that the three
shards' hash tags land on three different primaries (``docs/how-it-works.md``:
CRC16 spreads a few tags unevenly), so "per shard" is "per primary".
"""

# ruff: noqa: RUF003  (×, µ and – are meant)

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import redis
from redis.crc import key_slot

from aicm_tasks.broker.keys import dead_lettered_by_reason, shard_tag
from aicm_tasks.broker.records import RecordStore
from aicm_tasks.broker.topology import DEFAULT_CLUSTER_SHARDS, Topology, connect
from aicm_tasks.devtools.processes import free_port, start_redis, stop_process, wait_until
from aicm_tasks.devtools.redis_cluster import LocalRedisCluster
from aicm_tasks.settings import Settings
from bench.config import Counts
from bench.harness import Bench
from bench.redis_cpu import CpuSpent, snapshot, spent
from bench.sampling import cpu_seconds
from bench.scenarios.cluster_figures import Figures, Measured
from bench.scenarios.common import attempt, run_producer, start_aicm_worker
from bench.scenarios.drain import wait_ready
from bench.stats import Figure

logger = logging.getLogger(__name__)

#: ``track_many`` list size of the drain's backlog: 100 lists of 1,000 spread
#: evenly over 3 shards (lists of 10,000 would put 4/3/3 of 10 on them).
PREFILL_CHUNK = 1_000


@dataclass
class Deployment:
    """Where the records live for one contender, and the servers whose CPU counts."""

    name: str
    #: Environment of producers and workers on top of ``Bench.aicm_env``.
    env: dict[str, str]
    #: One plain client per primary (INFO is per server).
    primaries: list[redis.Redis]
    settings: Callable[[str, str], Settings]
    #: One plain client per replica: their CPU competes with the worker's on
    #: this machine, where a real deployment has them on other hosts.
    replicas: list[redis.Redis] = field(default_factory=list)
    _connected: list[Topology] = field(default_factory=list)

    def stores(self, queue: str, prefix: str) -> list[RecordStore]:
        """The shards' stores for ``queue`` (the bench process's own clients)."""
        topology = connect(self.settings(queue, prefix))
        self._connected.append(topology)
        return topology.stores

    def close_stores(self) -> None:
        """Close the clients :meth:`stores` opened."""
        while self._connected:
            self._connected.pop().close()


def run(bench: Bench, counts: Counts) -> list[Figure]:
    """Start the standalone Redis and the cluster; measure every deployment ``counts.runs`` times."""
    root = bench.root / "cluster-scenario"
    single_port = free_port()
    single_process = start_redis(single_port, root / "single", appendonly=False)
    cluster = LocalRedisCluster(root / "cluster", appendonly=False)
    try:
        cluster.start()
        deployments = build(bench, f"redis://127.0.0.1:{single_port}/0", cluster)
        return measure_all(bench, counts, deployments, cluster)
    finally:
        cluster.stop()
        stop_process(single_process, timeout_s=10)


def build(bench: Bench, single_url: str, cluster: LocalRedisCluster) -> list[Deployment]:
    """The three deployments over the running servers."""
    primaries = cluster.primaries()
    urls = ",".join(node.url for node in primaries)
    clients = [node.client for node in primaries]
    replicas = [node.client for node in cluster.nodes if node not in primaries]

    def single_settings(queue: str, prefix: str) -> Settings:
        return Settings(broker_url=single_url, queue=queue, key_prefix=prefix)

    def cluster_settings(acks: int) -> Callable[[str, str], Settings]:
        def make(queue: str, prefix: str) -> Settings:
            return Settings(
                broker_url=bench.redis_url,
                shard_urls=tuple(urls.split(",")),
                redis_cluster=True,
                queue=queue,
                key_prefix=prefix,
                replica_acks=acks,
            )

        return make

    on_cluster = {"AICM_SHARD_URLS": urls, "AICM_REDIS_CLUSTER": "true"}
    return [
        Deployment(
            "single", {"AICM_BROKER_URL": single_url}, [redis.Redis.from_url(single_url)],
            single_settings,
        ),
        Deployment("cluster", on_cluster, clients, cluster_settings(0), replicas),
        Deployment("acks", {**on_cluster, "AICM_REPLICA_ACKS": "1"}, clients, cluster_settings(1),
                   replicas),
    ]  # fmt: skip


def spread_prefix(queue: str, cluster: LocalRedisCluster) -> str:
    """A key prefix whose shards' hash tags land on as many primaries as there are shards."""
    for attempt_index in range(200):
        prefix = f"{queue}-keys-{attempt_index}"
        ports = {
            cluster.node_of_slot(key_slot(shard_tag(prefix, i).encode())).port
            for i in range(DEFAULT_CLUSTER_SHARDS)
        }
        if len(ports) == DEFAULT_CLUSTER_SHARDS:
            return prefix
    raise RuntimeError("no key prefix spreads the shards over every primary")


def measure_all(
    bench: Bench, counts: Counts, deployments: list[Deployment], cluster: LocalRedisCluster
) -> list[Figure]:
    """Every deployment ``counts.runs`` times, alternating within each run."""
    figures = Figures(counts)
    for run_index in range(counts.runs):
        this_run: dict[str, Measured] = {}
        for deployment in deployments:
            logger.info("cluster: %s, run %d/%d", deployment.name, run_index + 1, counts.runs)
            try:
                measured = measure(bench, counts, deployment, cluster)
            except Exception as exc:
                attempt(
                    figures.of(deployment.name),
                    f"cluster {deployment.name} run {run_index + 1}",
                    exc,
                )
                continue
            this_run[deployment.name] = measured
            figures.add(deployment.name, measured)
        figures.add_ratios(this_run)
    return figures.all()


def measure(
    bench: Bench, counts: Counts, deployment: Deployment, cluster: LocalRedisCluster
) -> Measured:
    """One publish run and one drain run of one deployment."""
    measured = Measured()
    try:
        publish(bench, counts, deployment, cluster, measured)
        drain(bench, counts, deployment, cluster, measured)
    finally:
        deployment.close_stores()
    return measured


def fresh_queue(bench: Bench, deployment: Deployment, cluster: LocalRedisCluster,
                kind: str) -> tuple[str, str, list[RecordStore]]:  # fmt: skip
    """Empty every server and the stub; a new queue, its prefix and its shards' stores."""
    bench.reset()
    for client in deployment.primaries:
        client.flushall()
    queue = bench.unique(f"cluster-{kind}-{deployment.name}")
    prefix = f"{queue}-keys" if deployment.name == "single" else spread_prefix(queue, cluster)
    return queue, prefix, deployment.stores(queue, prefix)


def publish(bench: Bench, counts: Counts, deployment: Deployment, cluster: LocalRedisCluster,
            measured: Measured) -> None:  # fmt: skip
    """``track.delay`` p50/p99 in a fresh process; Redis CPU per published record per shard."""
    queue, prefix, stores = fresh_queue(bench, deployment, cluster, "publish")
    env = bench.aicm_env(queue, AICM_KEY_PREFIX=prefix, **deployment.env)
    args = ["--kind", "aicm", "--calls", str(counts.publish_calls),
            "--warmup", str(counts.publish_warmup)]  # fmt: skip
    before = [snapshot(client) for client in deployment.primaries]
    result = run_producer(bench, "publish-cost", args, env)
    after = [snapshot(client) for client in deployment.primaries]
    carried = {store.keys.queue: int(store.client.llen(store.keys.queue)) for store in stores}
    measured.published_twice = check_carried(counts.publish_calls + counts.publish_warmup, carried)
    measured.p50_us, measured.p99_us = float(result["p50_us"]), float(result["p99_us"])
    used = [spent(b, a) for b, a in zip(before, after, strict=True)]
    measured.publish_cpu_us = per_shard(cluster, deployment, stores, used, carried)


def drain(bench: Bench, counts: Counts, deployment: Deployment, cluster: LocalRedisCluster,
          measured: Measured) -> None:  # fmt: skip
    """One default worker drains ``counts.cluster_drain`` records; Redis CPU per record per shard."""
    count = counts.cluster_drain
    queue, prefix, stores = fresh_queue(bench, deployment, cluster, "drain")
    env = {"AICM_KEY_PREFIX": prefix, **deployment.env}
    before_fill = [snapshot(client) for client in deployment.primaries]
    run_producer(bench, "prefill-aicm", ["--count", str(count), "--chunk", str(PREFILL_CHUNK)],
                 bench.aicm_env(queue, **env))  # fmt: skip
    before = [snapshot(client) for client in deployment.primaries]
    carried = {store.keys.queue: int(store.client.llen(store.keys.queue)) for store in stores}
    filled_twice = check_carried(count, carried)
    held = sum(carried.values())
    filled = [spent(b, a) for b, a in zip(before_fill, before, strict=True)]
    measured.fill_cpu_us = per_shard(cluster, deployment, stores, filled, carried)
    replicas_before = [snapshot(client) for client in deployment.replicas]
    start_s = time.time()
    worker = start_aicm_worker(bench, queue, **env)
    try:
        ready_s = wait_ready(
            worker, lambda: all(s.client.zcard(s.keys.consumers) > 0 for s in stores)
        )
        worker_cpu_s = cpu_seconds(worker.pid)
        stats = bench.stub.wait_for(count, timeout_s=max(120.0, count / 300))
        # The stub has every record once the last POST is answered; its batch
        # settles a moment later. Count the CPU up to the last settle, and
        # account for every record: all delivered, none dead-lettered.
        wait_until(lambda: delivered(stores) >= held, 60, "every record settled")
        after = [snapshot(client) for client in deployment.primaries]
        replicas_after = [snapshot(client) for client in deployment.replicas]
        worker_cpu_s = cpu_seconds(worker.pid) - worker_cpu_s
    finally:
        bench.stop(worker)
    dead = sum(sum(dead_lettered_by_reason(s.stats()).values()) for s in stores)
    if delivered(stores) != held or dead:
        raise RuntimeError(f"{held:,} queued: {delivered(stores):,} delivered, {dead:,} dead")
    last, first = stats["last_new_arrival"], stats["first_arrival"]
    measured.ready_all = count / (last - ready_s)
    measured.steady = count / max(last - first, 1e-6)
    used = [spent(b, a) for b, a in zip(before, after, strict=True)]
    measured.drain_cpu_us = per_shard(cluster, deployment, stores, used, carried)
    replicas_cpu_s = sum(
        spent(b, a).cpu_s for b, a in zip(replicas_before, replicas_after, strict=True)
    )
    measured.also = {
        "spawn→all rec/s": count / (last - start_s),
        "filled twice": float(filled_twice),
        "duplicates": float(stats["records"] - stats["unique"]),
        "worker CPU µs/record": worker_cpu_s * 1e6 / held,
        "replicas' CPU µs/record": replicas_cpu_s * 1e6 / held,
        **busiest_per_record(used, count),
    }


def check_carried(published: int, carried: dict[str, int]) -> int:
    """How many records the shards hold beyond ``published``; raises when they hold fewer.

    A publish whose shard answered too late for the publish budget goes to the
    next shard: when the first shard had taken it after all, the record is in
    two shards (same ``response_id``; the server dedupes). Perhaps twice, never
    lost: seen once in 20,500 publishes with this 2-core machine at load 7."""
    held = sum(carried.values())
    if held < published:
        raise RuntimeError(f"published {published:,} records, the shards hold {carried}")
    return held - published


def delivered(stores: list[RecordStore]) -> int:
    """Records delivered over every shard."""
    return sum(store.stats().get("delivered", 0) for store in stores)


def per_shard(cluster: LocalRedisCluster, deployment: Deployment, stores: list[RecordStore],
              used: list[CpuSpent], carried: dict[str, int]) -> list[float]:  # fmt: skip
    """Redis CPU µs per record of each shard: its primary's CPU ÷ the records it carried."""
    if deployment.name == "single":
        return [used[0].cpu_s * 1e6 / max(sum(carried.values()), 1)]
    ports = [
        int(client.connection_pool.connection_kwargs["port"]) for client in deployment.primaries
    ]
    values = []
    for store in stores:
        port = cluster.node_of(store.keys.queue).port
        values.append(used[ports.index(port)].cpu_s * 1e6 / max(carried[store.keys.queue], 1))
    return values


def busiest_per_record(used: list[CpuSpent], records: int) -> dict[str, float]:
    """The busiest commands over every primary: µs per record and µs per call."""
    totals: dict[str, tuple[int, int]] = {}
    for server in used:
        for name, calls, usec in server.busiest(len(server.commands)):
            calls0, usec0 = totals.get(name, (0, 0))
            totals[name] = (calls0 + calls, usec0 + usec)
    ranked = sorted(totals.items(), key=lambda item: item[1][1], reverse=True)[:2]
    also: dict[str, float] = {}
    for name, (calls, usec) in ranked:
        also[f"{name} µs/record"] = usec / records
        also[f"{name} µs/call"] = usec / calls
    return also
