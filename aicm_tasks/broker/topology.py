"""Which Redis holds which shard of the records: one standalone Redis, several
standalone primaries, or a Redis Cluster, behind one code path.

Records live in ``AICM_SHARDS`` shards; a shard is one keyspace
(:func:`aicm_tasks.broker.keys.shard_keys`) and one :class:`RecordStore`. Where
a shard lives:

- nothing set: one shard on ``AICM_BROKER_URL`` with today's key names (no hash
  tag), so an upgraded deployment finds its queued records where they were;
- ``AICM_SHARD_URLS=redis://a,redis://b,...`` (standalone primaries): shard
  ``i`` on URL ``i mod len(urls)``; as many shards as URLs unless set;
- ``AICM_REDIS_CLUSTER=true`` with ``AICM_SHARD_URLS`` naming seed nodes: every
  shard on redis-py's :class:`~redis.cluster.RedisCluster`, which routes each
  shard's slot to the primary serving it and follows MOVED/ASK and failovers
  (publishes skip its per-command routing: :mod:`.cluster_records`);
  :data:`DEFAULT_CLUSTER_SHARDS` shards unless set.

In the last two, every key of a shard carries its hash tag. Celery itself (its
events for Flower, ordinary tasks) keeps using ``AICM_BROKER_URL``: kombu has no
Redis Cluster transport, so a cluster deployment points that at a small
standalone Redis.

Producers, workers and the CLI build a :class:`Topology` with their own client
options (timeouts): producers must fail fast, a worker's blocking wait must not.
Nothing coordinates shards: each worker consumes them all, each producer picks
one per publish.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import redis
from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import RedisClusterException

from aicm_tasks.broker.cluster_records import ClusterRecordStore
from aicm_tasks.broker.errors import ClusterUnreachableError
from aicm_tasks.broker.keys import Keys, shard_keys
from aicm_tasks.broker.records import BrokerClient, RecordStore
from aicm_tasks.broker.replicas import ReplicaAcks
from aicm_tasks.redact import redact_url
from aicm_tasks.settings import Settings

#: Shards on a Redis Cluster when ``AICM_SHARDS`` is unset: one per primary of
#: the smallest cluster (3 primaries). Set it higher to spread over more
#: primaries; never lower it while shards hold records (workers would not look).
DEFAULT_CLUSTER_SHARDS = 3


@dataclass(frozen=True, slots=True)
class ShardPlace:
    """Where one shard lives: its number, the URL of its Redis, its key names."""

    index: int
    url: str
    keys: Keys


@dataclass(frozen=True, slots=True)
class Layout:
    """The shards of a deployment, before any connection (a pure reading of settings)."""

    places: tuple[ShardPlace, ...]
    cluster: bool

    @property
    def tagged(self) -> bool:
        """Whether the key names carry shard hash tags (anything but one standalone shard)."""
        return self.cluster or len(self.places) > 1


def record_urls(settings: Settings) -> tuple[str, ...]:
    """The URLs of the Redis servers (or cluster seed nodes) that hold records."""
    return settings.shard_urls or (settings.broker_url,)


def shard_count(settings: Settings) -> int:
    """How many shards: ``AICM_SHARDS``, else one per URL (3 on a cluster)."""
    if settings.shards is not None:
        return settings.shards
    return DEFAULT_CLUSTER_SHARDS if settings.redis_cluster else len(record_urls(settings))


def layout_of(settings: Settings) -> Layout:
    """Which shard lives where, from settings alone."""
    urls = record_urls(settings)
    count = shard_count(settings)
    tagged = settings.redis_cluster or count > 1
    places = tuple(
        ShardPlace(
            index,
            urls[0] if settings.redis_cluster else urls[index % len(urls)],
            shard_keys(settings.queue, settings.key_prefix, index, tagged=tagged),
        )
        for index in range(count)
    )
    return Layout(places, settings.redis_cluster)


@dataclass(frozen=True)
class Shard:
    """One shard, connected: its number, where it lives (redacted) and its store."""

    index: int
    where: str
    store: RecordStore


@dataclass(frozen=True)
class Topology:
    """Every shard of a deployment, connected with one set of client options."""

    shards: tuple[Shard, ...]
    cluster: bool

    @property
    def stores(self) -> list[RecordStore]:
        return [shard.store for shard in self.shards]

    @property
    def clients(self) -> list[BrokerClient]:
        """Each distinct client once (several shards may share one server)."""
        seen: dict[int, BrokerClient] = {}
        for shard in self.shards:
            seen.setdefault(id(shard.store.client), shard.store.client)
        return list(seen.values())

    def close(self) -> None:
        """Close every client's connections."""
        for client in self.clients:
            client.close()

    def shards_per_server(self) -> dict[str, list[int]]:
        """Server (``host:port``) -> the shards it holds now; on a cluster, every
        primary is listed, those holding none with an empty list."""
        placed: dict[str, list[int]] = {}
        for client in self.clients:
            if isinstance(client, RedisCluster):
                for node in client.get_primaries():  # type: ignore[no-untyped-call]
                    placed.setdefault(node.name, [])
        for shard in self.shards:
            client = shard.store.client
            if isinstance(client, RedisCluster):
                # redis-py leaves this helper unannotated.
                node = client.get_node_from_key(shard.store.keys.queue)  # type: ignore[no-untyped-call]
                name = str(node.name)
            else:
                kwargs = client.connection_pool.connection_kwargs
                name = f"{kwargs.get('host', kwargs.get('path', '?'))}:{kwargs.get('port', '')}"
            placed.setdefault(name, []).append(shard.index)
        return placed


def uneven(placed: dict[str, list[int]]) -> bool:
    """Whether some server holds two shards more than another (load follows shards)."""
    counts = [len(shards) for shards in placed.values()]
    return bool(counts) and max(counts) - min(counts) > 1


def connect(settings: Settings, **client_options: Any) -> Topology:
    """Clients and stores for every shard, with ``client_options`` (timeouts) on
    every client. A cluster client connects here, to learn the slot map: raises
    :class:`redis.ConnectionError` when no seed node answers."""
    layout = layout_of(settings)
    acks = ReplicaAcks(settings.replica_acks, settings.replica_ack_timeout_s)
    if layout.cluster:
        cluster = cluster_client(record_urls(settings), **client_options)
        return Topology(
            tuple(
                Shard(p.index, redact_url(p.url), ClusterRecordStore(cluster, p.keys, acks))
                for p in layout.places
            ),
            cluster=True,
        )
    clients: dict[str, redis.Redis] = {}
    shards = []
    for place in layout.places:
        if place.url not in clients:
            clients[place.url] = redis.Redis.from_url(place.url, **client_options)
        shards.append(
            Shard(
                place.index,
                redact_url(place.url),
                RecordStore(clients[place.url], place.keys, acks),
            )
        )
    return Topology(tuple(shards), cluster=False)


def cluster_client(urls: tuple[str, ...], **client_options: Any) -> RedisCluster:
    """redis-py's cluster client seeded with every URL (any live node will do);
    password and TLS options come from the first."""
    # The Redis-only options of a standalone client have no cluster equivalent.
    options = {k: v for k, v in client_options.items() if k != "health_check_interval"}
    seeds = []
    for url in urls[1:]:
        parts = urlsplit(url)
        host, port = parts.hostname or "127.0.0.1", parts.port or 6379
        seeds.append(ClusterNode(host, port))  # type: ignore[no-untyped-call]  # unannotated
    try:
        cluster = RedisCluster(url=urls[0], startup_nodes=seeds, **options)
    except RedisClusterException as exc:
        # Raised when no seed answers; callers handle RedisError (spool, retry).
        raise redis.ConnectionError(
            f"no node of the Redis Cluster at {redact_url(urls[0])} answered: {exc}"
        ) from exc
    unreachable_as_connection_error(cluster)
    return cluster


def unreachable_as_connection_error(cluster: RedisCluster) -> None:
    """Make ``cluster`` raise :class:`ClusterUnreachableError` (a
    :class:`redis.ConnectionError`) when no node of the cluster answers.

    After a lost connection redis-py reads the slot map again
    (``NodesManager.initialize``), and when no node answers that raises
    ``RedisClusterException``, which is not a ``RedisError``: every caller that
    backs off and retries on ``RedisError`` (the worker's housekeeping and
    delivery threads, the producer's fallback to another shard and the spool)
    let it through. Measured: every node of a 3-primary cluster killed for a
    few seconds killed the worker's housekeeping thread and its 4 delivery
    threads; the cluster back, the worker delivered nothing and renewed no
    lease. Nothing in redis-py catches ``RedisClusterException`` itself, so
    changing its class there changes only what reaches us.
    """
    nodes = cluster.nodes_manager
    initialize = nodes.initialize

    @functools.wraps(initialize)
    def initialize_or_connection_error(*args: Any, **kwargs: Any) -> None:
        try:
            initialize(*args, **kwargs)
        except RedisClusterException as exc:
            raise ClusterUnreachableError(str(exc)) from exc

    nodes.initialize = initialize_or_connection_error  # type: ignore[method-assign]
