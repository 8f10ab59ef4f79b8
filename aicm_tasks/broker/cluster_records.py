"""A shard's publishes on Redis Cluster, sent straight to the primary serving its slot.

Every key of a shard shares one hash tag, so a shard's slot never changes and
the node to publish to follows from the cluster client's slot map alone.
redis-py's :class:`~redis.cluster.RedisCluster` works that out again for each
command: it resolves the command's routing policy, hashes the key twice (CRC16
each time), picks the node, records metrics, then sends on that node's own
:class:`redis.Redis` connection pool. Measured on the 3-primary test cluster
(2-core machine, 20k calls, perf_counter_ns): an LPUSH through ``RedisCluster``
costs 128-132 µs p50, the same LPUSH on the node's ``redis.Redis`` 70-86 µs,
and looking the node up in the slot map here about 2 µs. ``track.delay`` p50
on 3 cluster shards against one standalone Redis, same script and run (20k
calls a repeat, median of 3 or 5, five runs on a loaded 2-core machine), went
from 1.54-2.16x to 0.86-1.48x (35-89 µs less each run), with the producer's
runs on one shard (``producer/shards.py``).

So a publish looks the slot's primary up in the cluster client's map and sends
on that node's pool (the one the cluster client itself uses: no extra
connections). The map can be wrong: a failover promoted a replica, an operator
moved the slot, a pooled connection went stale. Then, once, within the publish
budget (each attempt has half of it, ``producer_topology``):

- no answer (:class:`redis.ConnectionError`, :class:`redis.TimeoutError`), a
  ``READONLY`` or ``CLUSTERDOWN`` answer: drop the server's idle connections,
  read the slot map again (one ``CLUSTER SLOTS``, the dead node asked last),
  and send to the primary it names now;
- a redirection (``MOVED``, ``ASK`` during a migration, ``TRYAGAIN``): send
  through the cluster client, which follows it (``ASKING`` to the importing
  node, or the new owner whose slot it records, which the next publish reads).

A second failure propagates as a :class:`redis.RedisError`: the producer
publishes to another shard, then spools (:mod:`aicm_tasks.producer.shards`).
Nothing is lost either way; a retry after a timeout may publish a record twice
(the /track server dedupes on ``response_id``). With replica acknowledgement the
write and its ``WAIT`` keep going in one pipeline on one connection to the slot's
primary (:mod:`aicm_tasks.broker.replicas`), without the retry: a failure there
publishes to another shard, as before. Workers keep the cluster client for every
other command: their costs are per batch, not per record.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

import redis
from redis.cluster import RedisCluster
from redis.exceptions import (
    AskError,
    ClusterDownError,
    ReadOnlyError,
    RedisClusterException,
    TryAgainError,
)

from aicm_tasks.broker.keys import Keys
from aicm_tasks.broker.records import BrokerClient, RecordStore
from aicm_tasks.broker.replicas import ReplicaAcks

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Answers after which the slot map is read again and the command sent to the
#: primary it names: the node is gone or no longer a primary, or the cluster
#: refuses writes for now. ``MovedError`` is an ``AskError``: a redirection.
REREAD_MAP_ERRORS: tuple[type[redis.RedisError], ...] = (
    redis.ConnectionError,
    redis.TimeoutError,
    ReadOnlyError,
    ClusterDownError,
)
#: Answers the cluster client follows by itself (MOVED, ASK, TRYAGAIN).
REDIRECT_ERRORS: tuple[type[redis.RedisError], ...] = (AskError, TryAgainError)


def refresh_slot_map(cluster: RedisCluster, failed_node: str | None = None) -> None:
    """Ask the cluster for its slot map again, ``failed_node`` (``host:port``) last;
    best effort: mid-failover no node may answer, and the caller's retry then fails."""
    with contextlib.suppress(redis.RedisError, RedisClusterException):
        cluster.nodes_manager.initialize(last_failed_node_name=failed_node)


class SlotRoute:
    """The primary serving one slot now, and one retry when it moved or died."""

    def __init__(self, cluster: RedisCluster, key: str) -> None:
        self.cluster = cluster
        self.key = key
        # The slot of a hash-tagged key is fixed: hash it once, not per publish.
        self.slot = int(cluster.keyslot(key))  # type: ignore[no-untyped-call]  # unannotated

    def server(self) -> redis.Redis:
        """A client of the primary the cluster client's slot map names for the
        slot (the cluster client's own pool for that node).

        Raises :class:`redis.ConnectionError` when no node serves the slot."""
        try:
            node = self.cluster.nodes_manager.get_node_from_slot(self.slot)
        except RedisClusterException as exc:
            raise redis.ConnectionError(
                f"no primary of the Redis Cluster serves slot {self.slot} ({self.key}) now"
            ) from exc
        server: redis.Redis = self.cluster.get_redis_connection(node)
        return server

    def run(self, command: Callable[[BrokerClient], T]) -> T:
        """``command`` on the slot's primary; once more after a redirection, a
        lost node or a refused write (see the module docstring)."""
        server = self.server()
        try:
            return command(server)
        except REDIRECT_ERRORS:
            return command(self.cluster)
        except REREAD_MAP_ERRORS as exc:
            self._forget(server, exc)
        return command(self.server())

    def _forget(self, server: redis.Redis, exc: redis.RedisError) -> None:
        kwargs = server.connection_pool.connection_kwargs
        name = f"{kwargs.get('host')}:{kwargs.get('port')}"
        logger.info(
            "the primary %s of slot %d (%s) failed (%s): reading the slot map again",
            name,
            self.slot,
            self.key,
            exc,
        )
        if isinstance(exc, redis.ConnectionError | redis.TimeoutError):
            # After a restart every idle pooled connection is stale: the retry
            # must open a new one, not take the next dead one.
            server.connection_pool.disconnect(inuse_connections=False)
        refresh_slot_map(self.cluster, name)


class ClusterRecordStore(RecordStore):
    """A shard's :class:`RecordStore` on Redis Cluster whose publishes (push,
    push_many, schedule) go straight to the primary serving its slot.

    Every other operation goes through the cluster client, as on a plain store.
    """

    client: RedisCluster

    def __init__(self, client: RedisCluster, keys: Keys, acks: ReplicaAcks | None = None) -> None:
        super().__init__(client, keys, acks)
        self.route = SlotRoute(client, keys.queue)

    def push(self, message: bytes) -> None:
        """Append one message to the queue (one round trip to the slot's primary)."""
        if self.acks.enabled:
            super().push(message)
            return
        queue = self.keys.queue
        self.route.run(lambda client: client.lpush(queue, message))

    def push_many(self, messages: Sequence[bytes], chunk: int = 10_000) -> None:
        """Append many messages in one round trip (pipelined LPUSH in chunks).

        A migration may move the key between two chunks; the retry then pushes
        every chunk again: duplicates, never a loss."""
        if self.acks.enabled:
            super().push_many(messages, chunk)
            return
        queue = self.keys.queue

        def write(client: BrokerClient) -> None:
            with client.pipeline(transaction=False) as pipe:
                for start in range(0, len(messages), chunk):
                    pipe.lpush(queue, *messages[start : start + chunk])
                pipe.execute()

        self.route.run(write)

    def schedule(self, items: Iterable[tuple[float, bytes]]) -> None:
        """Hold messages in the scheduled set until their due time (epoch seconds)."""
        if self.acks.enabled:
            super().schedule(items)
            return
        mapping = {message: due for due, message in items}
        if not mapping:
            return
        scheduled = self.keys.scheduled
        self.route.run(lambda client: client.zadd(scheduled, mapping))

    def server_client(self) -> redis.Redis:
        """The primary serving this shard's slot now (the slot hashed once)."""
        return self.route.server()
