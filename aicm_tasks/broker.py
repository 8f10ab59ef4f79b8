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
held batches back to the queue. These moves are Lua scripts because each must
be atomic: kombu's own Redis consumer pops a message (BRPOP) and records it as
unacknowledged in a second round trip, so a kill in between loses it.

Scripts take key names built at run time (batch keys), so they need a
standalone Redis or a primary with replicas/Sentinel, not Redis Cluster.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import redis

FETCH_LUA = """
-- KEYS: queue, batch, held, consumers; ARGV: count, consumer, lease_deadline
redis.call('SADD', KEYS[3], KEYS[2])
redis.call('ZADD', KEYS[4], ARGV[3], ARGV[2])
local n = tonumber(ARGV[1])
if n <= 0 then return {} end
local items = redis.call('LRANGE', KEYS[1], -n, -1)
if #items > 0 then
  redis.call('LTRIM', KEYS[1], 0, -(#items) - 1)
  redis.call('RPUSH', KEYS[2], unpack(items))
end
return items
"""

RESOLVE_LUA = """
-- KEYS: batch, held, scheduled, dlq, dlq_index, stats, queue
-- ARGV: n_retry, n_dead, n_stats, then n_retry x (score, message),
--       n_dead x (id, entry, score), n_stats x (field, increment)
if redis.call('SREM', KEYS[2], KEYS[1]) == 0 then
  -- Not ours any more (reclaimed after a lapsed lease). Whatever the key still
  -- holds (a BLMOVE that completed after the reclaim) goes back to the queue.
  local items = redis.call('LRANGE', KEYS[1], 0, -1)
  for i = 1, #items, 1000 do
    redis.call('RPUSH', KEYS[7], unpack(items, i, math.min(i + 999, #items)))
  end
  redis.call('DEL', KEYS[1])
  return 0
end
redis.call('DEL', KEYS[1])
local n_retry, n_dead, n_stats = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local i = 4
for _ = 1, n_retry do
  redis.call('ZADD', KEYS[3], ARGV[i], ARGV[i + 1]); i = i + 2
end
for _ = 1, n_dead do
  redis.call('HSET', KEYS[4], ARGV[i], ARGV[i + 1])
  redis.call('ZADD', KEYS[5], ARGV[i + 2], ARGV[i]); i = i + 3
end
for _ = 1, n_stats do
  redis.call('HINCRBY', KEYS[6], ARGV[i], ARGV[i + 1]); i = i + 2
end
return 1
"""

RELEASE_LUA = """
-- KEYS: batch, held, queue. Hands a batch back to the consuming end of the queue,
-- registered or not: a key that still exists holds records nobody else will return.
redis.call('SREM', KEYS[2], KEYS[1])
local items = redis.call('LRANGE', KEYS[1], 0, -1)
for i = 1, #items, 1000 do
  redis.call('RPUSH', KEYS[3], unpack(items, i, math.min(i + 999, #items)))
end
redis.call('DEL', KEYS[1])
return #items
"""

RECLAIM_LUA = """
-- KEYS: consumers, queue; ARGV: now, key_prefix, the caller (never reclaims itself)
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, 16)
local moved = 0
for _, consumer in ipairs(expired) do
  if consumer ~= ARGV[3] then
    local held = ARGV[2] .. ':held:' .. consumer
    for _, batch in ipairs(redis.call('SMEMBERS', held)) do
      local items = redis.call('LRANGE', batch, 0, -1)
      for i = 1, #items, 1000 do
        redis.call('RPUSH', KEYS[2], unpack(items, i, math.min(i + 999, #items)))
      end
      moved = moved + #items
      redis.call('DEL', batch)
    end
    redis.call('DEL', held)
    redis.call('ZREM', KEYS[1], consumer)
  end
end
return moved
"""

DROP_LEASE_LUA = """
-- KEYS: consumers, held; ARGV: consumer. Only a consumer that holds nothing may leave
-- at once; one still holding batches keeps its lease so that RECLAIM returns them.
if redis.call('SCARD', KEYS[2]) > 0 then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
return 1
"""

PROMOTE_LUA = """
-- KEYS: scheduled, queue; ARGV: now, limit
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
if #due > 0 then
  redis.call('RPUSH', KEYS[2], unpack(due))
  redis.call('ZREM', KEYS[1], unpack(due))
end
return #due
"""

#: Most scheduled records moved back to the queue by one PROMOTE call; the Lua
#: ``unpack`` limit is about 8,000 values.
PROMOTE_CHUNK = 1000


@dataclass(frozen=True, slots=True)
class Keys:
    """The Redis key names for one queue and key prefix."""

    queue: str
    prefix: str

    @property
    def scheduled(self) -> str:
        return f"{self.prefix}:scheduled"

    @property
    def consumers(self) -> str:
        return f"{self.prefix}:consumers"

    @property
    def dlq(self) -> str:
        return f"{self.prefix}:dlq"

    @property
    def dlq_index(self) -> str:
        return f"{self.prefix}:dlq:index"

    @property
    def stats(self) -> str:
        return f"{self.prefix}:stats"

    @property
    def seen(self) -> str:
        """Hash: consumer -> when it last renewed its lease (epoch seconds)."""
        return f"{self.prefix}:seen"

    @property
    def redis_settings(self) -> str:
        """Hash: the broker's eviction and persistence settings as a worker last read them."""
        return f"{self.prefix}:redis-settings"

    def held(self, consumer: str) -> str:
        return f"{self.prefix}:held:{consumer}"

    def batch(self, consumer: str, number: int) -> str:
        return f"{self.prefix}:batch:{consumer}:{number}"


@dataclass(frozen=True, slots=True)
class Resolution:
    """What to write when a batch's fate is final.

    ``retries`` are ``(due_epoch_s, message)``; ``dead_letters`` are
    ``(id, entry_json, failed_at_epoch_s)``; ``stats`` are counter increments.
    """

    retries: Sequence[tuple[float, bytes]] = ()
    dead_letters: Sequence[tuple[str, str, float]] = ()
    stats: dict[str, int] | None = None


class RecordStore:
    """The broker-side operations on records, over one redis-py client."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.client = client
        self.keys = keys
        self._fetch = client.register_script(FETCH_LUA)
        self._resolve = client.register_script(RESOLVE_LUA)
        self._release = client.register_script(RELEASE_LUA)
        self._reclaim = client.register_script(RECLAIM_LUA)
        self._promote = client.register_script(PROMOTE_LUA)
        self._drop_lease = client.register_script(DROP_LEASE_LUA)

    # -- producer side ---------------------------------------------------------
    def push(self, message: bytes) -> None:
        """Append one message to the queue (one round trip)."""
        self.client.lpush(self.keys.queue, message)

    def push_many(self, messages: Sequence[bytes], chunk: int = 10_000) -> None:
        """Append many messages in one round trip (pipelined LPUSH in chunks)."""
        with self.client.pipeline(transaction=False) as pipe:
            for start in range(0, len(messages), chunk):
                pipe.lpush(self.keys.queue, *messages[start : start + chunk])
            pipe.execute()

    def schedule(self, items: Iterable[tuple[float, bytes]]) -> None:
        """Hold messages in the scheduled set until their due time (epoch seconds)."""
        mapping = {message: due for due, message in items}
        if mapping:
            self.client.zadd(self.keys.scheduled, mapping)

    # -- worker side -------------------------------------------------------------
    def fetch(self, consumer: str, batch_key: str, count: int, lease_s: float) -> list[bytes]:
        """Move up to ``count`` messages into ``batch_key`` atomically; renew the lease."""
        deadline = time.time() + lease_s
        keys = [self.keys.queue, batch_key, self.keys.held(consumer), self.keys.consumers]
        return list(self._fetch(keys=keys, args=[count, consumer, deadline]))

    def wait_one(self, batch_key: str, timeout_s: float) -> bytes | None:
        """Block up to ``timeout_s`` for one message, moved into ``batch_key`` atomically.

        ``batch_key`` must already be registered by :meth:`fetch`.
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
        lease): its records are back in the queue and nothing is written.
        """
        stats = resolution.stats or {}
        args: list[Any] = [len(resolution.retries), len(resolution.dead_letters), len(stats)]
        for due, message in resolution.retries:
            args += [due, message]
        for dead_id, entry, failed_at in resolution.dead_letters:
            args += [dead_id, entry, failed_at]
        for field, increment in stats.items():
            args += [field, increment]
        keys = [
            batch_key,
            self.keys.held(consumer),
            self.keys.scheduled,
            self.keys.dlq,
            self.keys.dlq_index,
            self.keys.stats,
            self.keys.queue,
        ]
        return bool(self._resolve(keys=keys, args=args))

    def release(self, consumer: str, batch_key: str) -> int:
        """Hand a held batch back to the queue; returns how many records went back."""
        keys = [batch_key, self.keys.held(consumer), self.keys.queue]
        return int(self._release(keys=keys))

    def renew_lease(self, consumer: str, lease_s: float) -> None:
        """Extend ``consumer``'s lease on every batch it holds, and note it was seen."""
        now = time.time()
        with self.client.pipeline(transaction=False) as pipe:
            pipe.zadd(self.keys.consumers, {consumer: now + lease_s})
            pipe.hset(self.keys.seen, consumer, now)
            pipe.execute()

    def last_seen(self) -> dict[str, float]:
        """When each worker last renewed its lease (epoch seconds)."""
        return {_as_text(k): float(v) for k, v in self.client.hgetall(self.keys.seen).items()}

    def forget_unseen(self, older_than_s: float) -> int:
        """Drop ``seen`` entries of workers gone for longer than ``older_than_s``."""
        cutoff = time.time() - older_than_s
        stale = [name for name, at in self.last_seen().items() if at < cutoff]
        return int(self.client.hdel(self.keys.seen, *stale)) if stale else 0

    def drop_lease(self, consumer: str) -> bool:
        """Forget a consumer at clean shutdown, unless it still holds a batch."""
        keys = [self.keys.consumers, self.keys.held(consumer)]
        return bool(self._drop_lease(keys=keys, args=[consumer]))

    def reclaim_expired(self, caller: str = "") -> int:
        """Push batches of consumers whose lease expired back to the queue.

        ``caller`` is never reclaimed: a live worker whose lease lapsed (a long
        pause) renews it next and keeps its batches, rather than racing itself.
        """
        keys = [self.keys.consumers, self.keys.queue]
        return int(self._reclaim(keys=keys, args=[time.time(), self.keys.prefix, caller]))

    def promote_due(self, now: float | None = None) -> int:
        """Move scheduled messages whose time has come back to the queue."""
        now = time.time() if now is None else now
        moved = 0
        while True:
            count = int(
                self._promote(
                    keys=[self.keys.scheduled, self.keys.queue], args=[now, PROMOTE_CHUNK]
                )
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


def _as_bytes(value: bytes | str | None) -> bytes | None:
    return value.encode() if isinstance(value, str) else value


def _as_text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
