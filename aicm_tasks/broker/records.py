"""Where records live in Redis, and the atomic moves between those places.

::

    producers --LPUSH--> <queue>  (a Celery queue name, a Redis list)
                            |  FETCH (Lua) / BLMOVE: atomic hand-over
                            v
      <prefix>:batch:<consumer>:<n>   a batch held by one worker, listed in
      <prefix>:held:<consumer>        and covered by a lease in <prefix>:consumers
                            |  RESOLVE (Lua): one atomic step per batch
          +-----------------+------------------+
          v                 v                  v
     (delivered:      <prefix>:scheduled   <prefix>:dlq + <prefix>:dlq:index
      removed)        retries, countdowns   dead letters with their reason
                            |  PROMOTE (Lua) when due
                            v
                         <queue>

A record is removed from Redis only by RESOLVE, after its fate is final. A
worker that dies stops renewing its lease; RECLAIM (any worker) then pushes its
held batches back to the queue, and SWEEP returns any batch key that no live
lease covers, whatever left it there. Leases, their expiry and retry due times
are read off the Redis server's clock (``TIME`` inside the scripts), never a
host's: hosts' clocks differ, and a worker running ahead by the redelivery
timeout would otherwise reclaim live batches. A batch's registration in its
worker's held set is its fencing token: granted once when the batch is created,
revoked for good by a reclaim, so a worker can never settle (or dead-letter, or
count) records another worker took back. These moves are Lua scripts
(``broker/lua/*.lua``, read by :mod:`aicm_tasks.broker.scripts`) because each must
be atomic: kombu's own Redis consumer pops a message (BRPOP) and records it as
unacknowledged in a second round trip, so a kill in between loses it.

Every script is handed every key it touches (the one built inside a script, RESOLVE's
rate bucket, begins with the shard's prefix and so shares its tag),
and all keys of one store share a shard's hash tag (:mod:`aicm_tasks.broker.keys`),
so the same scripts run on a standalone Redis and on Redis Cluster.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

import redis
from redis.cluster import RedisCluster

from aicm_tasks.broker import scripts
from aicm_tasks.broker.keys import IDLE_AT, RATE_BUCKET_S, RATE_KEEP_S, Keys
from aicm_tasks.broker.replicas import ReplicaAcks, write_acknowledged

# Re-exported: callers name it from here, beside RecordStore.resolve.
from aicm_tasks.broker.resolution import Resolution as Resolution

logger = logging.getLogger(__name__)

# Under ``maxmemory`` with ``noeviction``, Redis refuses a script whose first
# write is one that may grow memory (LPUSH, ZADD, SADD, HSET: "deny-oom"), and
# lets a script that has written once run to its end, so it never stops midway.
# Every script that moves records therefore removes before it adds (LTRIM, DEL,
# ZREM, SREM first, in ``lua/``): a full Redis still lets workers register, take
# the queue and settle it, which frees the memory, instead of refusing them all
# until an operator raises the limit while producers fill their spools.

#: Most scheduled records moved back to the queue by one PROMOTE call; the Lua
#: ``unpack`` limit is about 8,000 values.
PROMOTE_CHUNK = 1000
#: Most expired consumers one RECLAIM round looks at.
RECLAIM_CHUNK = 16
#: Tries to reclaim one consumer whose held set changes under us before leaving
#: it to the next round.
RECLAIM_TRIES = 3

#: A client of the broker: one standalone Redis, or redis-py's cluster client
#: (which follows MOVED/ASK redirections and failovers by itself).
BrokerClient = redis.Redis | RedisCluster


class RecordStore:
    """The broker-side operations on records, over one redis-py client.

    ``acks``: replicas that must acknowledge each publish and settle (see
    :mod:`aicm_tasks.broker.replicas`); none by default.
    """

    def __init__(self, client: BrokerClient, keys: Keys, acks: ReplicaAcks | None = None) -> None:
        self.client = client
        self.keys = keys
        self.acks = acks or ReplicaAcks()
        self._expired = client.register_script(scripts.source("expired"))
        self._fetch = client.register_script(scripts.source("fetch"))
        self._resolve = client.register_script(scripts.source("resolve"))
        self._release = client.register_script(scripts.source("release"))
        self._reclaim = client.register_script(scripts.source("reclaim"))
        self._sweep = client.register_script(scripts.source("sweep"))
        self._renew = client.register_script(scripts.source("renew"))
        self._promote = client.register_script(scripts.source("promote"))
        self._drop_lease = client.register_script(scripts.source("drop_lease"))
        self._forget_unseen = client.register_script(scripts.source("forget_unseen"))
        self._note_idle = client.register_script(scripts.source("note_idle"))

    # -- producer side ---------------------------------------------------------
    def push(self, message: bytes) -> None:
        """Append one message to the queue (one round trip).

        With replica acknowledgement, raises :class:`redis.TimeoutError` when
        too few replicas acknowledged it in time: publish it elsewhere."""
        if self.acks.enabled:
            self._published(lambda pipe: pipe.lpush(self.keys.queue, message))
            return
        self.client.lpush(self.keys.queue, message)

    def push_many(self, messages: Sequence[bytes], chunk: int = 10_000) -> None:
        """Append many messages in one round trip (pipelined LPUSH in chunks)."""

        def write(pipe: Any) -> None:
            for start in range(0, len(messages), chunk):
                pipe.lpush(self.keys.queue, *messages[start : start + chunk])

        if self.acks.enabled:
            self._published(write)
            return
        with self.client.pipeline(transaction=False) as pipe:
            write(pipe)
            pipe.execute()

    def schedule(self, items: Iterable[tuple[float, bytes]]) -> None:
        """Hold messages in the scheduled set until their due time (epoch seconds)."""
        mapping = {message: due for due, message in items}
        if not mapping:
            return
        if self.acks.enabled:
            self._published(lambda pipe: pipe.zadd(self.keys.scheduled, mapping))
            return
        self.client.zadd(self.keys.scheduled, mapping)

    def _published(self, write: Any) -> None:
        """``write`` followed by WAIT; raises when too few replicas acknowledged it."""
        _, acknowledged = write_acknowledged(self.client, self.server_client(), self.acks, write)
        if acknowledged < self.acks.replicas:
            raise redis.TimeoutError(
                f"{acknowledged} of {self.acks.replicas} replicas acknowledged the publish "
                f"within {self.acks.timeout_s:g}s (AICM_REPLICA_ACK_TIMEOUT_S)"
            )

    # -- worker side -------------------------------------------------------------
    def fetch(
        self, consumer: str, batch_key: str, count: int, lease_s: float, *, first: bool = True
    ) -> list[bytes] | None:
        """Move up to ``count`` messages into ``batch_key`` atomically; renew the lease.

        ``first`` registers the batch as held by ``consumer``; later calls for the
        same batch (``first=False``) return None, and move nothing, once the
        batch was reclaimed: the caller no longer owns it.
        """
        keys = [self.keys.queue, batch_key, self.keys.held(consumer), self.keys.consumers]
        taken = self._fetch(keys=keys, args=[count, consumer, lease_s, "1" if first else "0"])
        return None if taken is None else list(taken)

    def wait_one(self, batch_key: str, timeout_s: float) -> bytes | None:
        """Block up to ``timeout_s`` for one message, moved into ``batch_key`` atomically.

        ``batch_key`` must already be registered by :meth:`fetch`. If it was
        reclaimed meanwhile, the message lands in a key no lease covers: the
        owner's :meth:`resolve` or :meth:`release`, or else :meth:`sweep`,
        returns it to the queue.
        """
        # BLMOVE takes fractional seconds (Redis >= 6); redis-py's hint says int.
        result = self.client.blmove(
            self.keys.queue,
            batch_key,
            max(timeout_s, 0.01),  # type: ignore[arg-type]
            "RIGHT",
            "LEFT",
        )
        return _as_bytes(result)

    def resolve(self, consumer: str, batch_key: str, resolution: Resolution) -> bool:
        """Apply a batch's final fate and forget it, atomically.

        Returns False when the batch was no longer held (reclaimed after a lost
        lease): its records are back in the queue and nothing is written, so no
        two workers ever settle the same record.
        """
        stats = resolution.stats or {}
        rates = resolution.rates or {}
        health = (*resolution.noted, *resolution.started, *resolution.ended)
        args: list[Any] = [
            len(resolution.retries),
            len(resolution.dead_letters),
            len(stats),
            len(rates),
            len(resolution.noted),
            len(resolution.started),
            len(resolution.ended),
            self.keys.rate_prefix,
            RATE_BUCKET_S,
            RATE_KEEP_S,
        ]
        for delay_s, message in resolution.retries:
            args += [max(0.0, delay_s), message]
        for dead_id, entry in resolution.dead_letters:
            args += [dead_id, entry]
        for field, increment in stats.items():
            args += [field, increment]
        for field, increment in rates.items():
            args += [field, increment]
        args += health
        keys = [
            batch_key,
            self.keys.held(consumer),
            self.keys.scheduled,
            self.keys.dlq,
            self.keys.dlq_index,
            self.keys.stats,
            self.keys.queue,
            self.keys.health,
        ]
        if not self.acks.enabled:
            return bool(self._resolve(keys=keys, args=args))
        (settled,), acknowledged = write_acknowledged(
            self.client,
            self.server_client(),
            self.acks,
            lambda pipe: self._resolve(keys=keys, args=args, client=pipe),
        )
        if acknowledged < self.acks.replicas:
            # Not an error: a settle lost in a failover returns its batch for
            # delivery again (duplicates, which the server dedupes), never a loss.
            logger.warning(
                "%d of %d replicas acknowledged the settle of %s within %gs",
                acknowledged,
                self.acks.replicas,
                batch_key,
                self.acks.timeout_s,
            )
        return bool(settled)

    def release(self, consumer: str, batch_key: str) -> int:
        """Hand a held batch back to the queue; returns how many records went back."""
        keys = [batch_key, self.keys.held(consumer), self.keys.queue]
        return int(self._release(keys=keys))

    def renew_lease(self, consumer: str, lease_s: float, name: str = "") -> float:
        """Extend ``consumer``'s lease on every batch it holds, and note it was seen
        (and, when given, its ``name``: the worker's Celery hostname, ``w1@host``).

        Returns the Redis server's time (epoch seconds), the clock every lease is
        decided on.
        """
        keys = [self.keys.consumers, self.keys.seen, self.keys.names]
        return float(self._renew(keys=keys, args=[consumer, lease_s, name]))

    def note_idle(self) -> bool:
        """Note IDLE_AT (the server's time) in the health hash unless a record is
        queued or due; the caller knows no worker holds one. True when noted."""
        keys = [self.keys.health, self.keys.queue, self.keys.scheduled]
        return bool(self._note_idle(keys=keys, args=[IDLE_AT]))

    def health(self) -> dict[str, float]:
        """The health hash: field -> time on the server's clock (epoch seconds)."""
        return {_as_text(k): float(v) for k, v in self.client.hgetall(self.keys.health).items()}

    def names(self) -> dict[str, str]:
        """Consumer -> the worker's Celery hostname, for workers that gave one."""
        raw = self.client.hgetall(self.keys.names)
        return {_as_text(k): _as_text(v) for k, v in raw.items()}

    def server_client(self) -> redis.Redis:
        """A client of the one Redis server that holds this store's keys: the
        client itself, or on a cluster the primary serving this shard's slot now
        (for CONFIG and INFO, which a cluster client would send to every node)."""
        if isinstance(self.client, RedisCluster):
            # redis-py leaves these cluster helpers unannotated.
            node = self.client.get_node_from_key(self.keys.queue)  # type: ignore[no-untyped-call]
            return self.client.get_redis_connection(node)
        return self.client

    def server_time(self) -> float:
        """The Redis server's clock, in epoch seconds: on a cluster, that of the
        primary holding this shard (the clock its leases are decided on)."""
        seconds, micros = self.server_client().time()
        return float(seconds) + float(micros) / 1e6

    def last_seen(self) -> dict[str, float]:
        """When each worker last renewed its lease (epoch seconds, server clock)."""
        return {_as_text(k): float(v) for k, v in self.client.hgetall(self.keys.seen).items()}

    def forget_unseen(self, older_than_s: float) -> int:
        """Drop ``seen`` entries of workers gone (no lease) for longer than ``older_than_s``."""
        keys = [self.keys.seen, self.keys.consumers, self.keys.names]
        return int(self._forget_unseen(keys=keys, args=[older_than_s]))

    def drop_lease(self, consumer: str) -> bool:
        """Forget a consumer at clean shutdown, unless it still holds a batch."""
        keys = [self.keys.consumers, self.keys.held(consumer)]
        return bool(self._drop_lease(keys=keys, args=[consumer]))

    def reclaim_expired(self, caller: str = "") -> int:
        """Push batches of consumers whose lease expired back to the queue.

        ``caller`` is never reclaimed: a live worker whose lease lapsed (a long
        pause) renews it next and keeps its batches, rather than racing itself.
        """
        expired = self._expired(keys=[self.keys.consumers], args=[caller, RECLAIM_CHUNK])
        moved = 0
        for raw in expired:
            moved += self._reclaim_one(_as_text(raw))
        return moved

    def _reclaim_one(self, consumer: str) -> int:
        """Return one expired consumer's batches; 0 when it renewed meanwhile.

        The held set is read first and its batch keys passed to the script (a
        script on Redis Cluster must declare its keys), which moves nothing
        unless the set still lists exactly those keys and the lease is still
        expired, on the server's clock.
        """
        held = self.keys.held(consumer)
        for _ in range(RECLAIM_TRIES):
            batches = sorted(_as_text(b) for b in self.client.smembers(held))
            keys = [self.keys.consumers, self.keys.queue, held, *batches]
            moved = int(self._reclaim(keys=keys, args=[consumer]))
            if moved >= 0:
                return moved
            score = self.client.zscore(self.keys.consumers, consumer)
            if score is None or score > self.server_time():
                return 0  # renewed (alive) or reclaimed by another worker
        return 0

    def sweep(self, scan_count: int = 1000) -> int:
        """Return every batch key that no live lease covers to the queue.

        RECLAIM returns what held sets list; this finds the rest, whatever left
        it (a BLMOVE that completed into a reclaimed batch, then a kill). It
        SCANs the database for batch keys: one round trip per ``scan_count``
        keys of the database, so it runs rarely (SWEEP_INTERVAL_S).
        """
        head = self.keys.batch_prefix
        moved = 0
        options: dict[str, Any] = {}
        if isinstance(self.client, RedisCluster):
            # Only the node that serves this shard's slot holds its batch keys.
            options["target_nodes"] = self.client.get_node_from_key(  # type: ignore[no-untyped-call]
                self.keys.queue
            )
        for raw_key in self.client.scan_iter(
            match=_glob_escape(head) + "*", count=scan_count, **options
        ):
            batch_key = _as_text(raw_key)
            consumer = batch_key[len(head) :].rpartition(":")[0]
            keys = [batch_key, self.keys.held(consumer), self.keys.consumers, self.keys.queue]
            returned = int(self._sweep(keys=keys, args=[consumer]))
            if returned > 0:
                moved += returned
        return moved

    def promote_due(self, now: float | None = None) -> int:
        """Move scheduled messages whose time has come back to the queue.

        ``now`` (epoch seconds) defaults to the Redis server's clock.
        """
        moved = 0
        at = "" if now is None else repr(float(now))
        while True:
            count = int(
                self._promote(keys=[self.keys.scheduled, self.keys.queue], args=[PROMOTE_CHUNK, at])
            )
            moved += count
            if count < PROMOTE_CHUNK:
                return moved

    # -- figures -----------------------------------------------------------------
    def depth(self) -> dict[str, int]:
        """Queue length, scheduled count, records held by workers, dead letters."""
        with self.client.pipeline(transaction=False) as pipe:
            pipe.llen(self.keys.queue)
            pipe.zcard(self.keys.scheduled)
            pipe.zcard(self.keys.dlq_index)
            pipe.zrange(self.keys.consumers, 0, -1)
            queued, scheduled, dead, consumers = pipe.execute()
        held = 0
        for consumer in consumers:
            batches = self.client.smembers(self.keys.held(_as_text(consumer)))
            if batches:
                with self.client.pipeline(transaction=False) as pipe:
                    for batch in batches:
                        pipe.llen(batch)
                    held += sum(pipe.execute())
        return {
            "queued": int(queued),
            "scheduled": int(scheduled),
            "held": held,
            "dead_letters": int(dead),
            "workers": len(consumers),
        }

    def stats(self) -> dict[str, int]:
        """The delivery counters (delivered, retried, dead_lettered:<reason>, ...)."""
        raw = self.client.hgetall(self.keys.stats)
        return {_as_text(k): int(v) for k, v in raw.items()}


def _glob_escape(text: str) -> str:
    """``text`` with the characters SCAN's MATCH treats as a pattern escaped."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def _as_bytes(value: bytes | str | None) -> bytes | None:
    return value.encode() if isinstance(value, str) else value


def _as_text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
