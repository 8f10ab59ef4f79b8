"""Every Redis key name aicm-tasks uses, for one queue and key prefix (one shard).

One place, so that a reader sees the whole keyspace at once::

    <queue>                        list: records ready for delivery (LPUSH in, taken from the right)
    <prefix>:batch:<consumer>:<n>  list: one batch held by a worker
    <prefix>:held:<consumer>       set: that worker's batch keys (its fencing tokens)
    <prefix>:consumers             zset: worker -> lease deadline (server clock)
    <prefix>:seen                  hash: worker -> when it last renewed its lease
    <prefix>:names                 hash: worker -> its Celery hostname (``w1@host``, as Flower names it)
    <prefix>:scheduled             zset: retries and countdowns, by due time
    <prefix>:dlq, <prefix>:dlq:index   hash + zset: dead letters and their times
    <prefix>:stats                 hash: totals (delivered, dead_lettered:<reason>, ...)
    <prefix>:rate:<bucket>         hash: records and requests per RATE_BUCKET_S bucket (server clock)
    <prefix>:health                hash: when records were last delivered, nothing waited, retries began, the key was refused
    <prefix>:errors                list: the last delivery errors, for the monitor
    <prefix>:redis-settings        hash: the broker's settings as a worker last read them
    <prefix>:imported              set: SDK queue rows already imported
    <prefix>:limits                hash: API-key alias -> its triggered limits (verified), and issue times
    <prefix>:limits:changed        pub/sub channel: a set of triggered limits changed

Shards (see :mod:`aicm_tasks.broker.topology`). One shard on a standalone Redis
(the default) uses the names above exactly, ``aicm.tracking`` and ``aicm:...``,
so records queued before an upgrade stay where workers look. With several
shards, or on Redis Cluster, shard ``i`` is the same keyspace under a hash tag
that names the prefix and the shard, ``{<prefix>:<i>}``::

    <queue>:{<prefix>:<i>}         the shard's ready list (aicm.tracking:{aicm:0})
    {<prefix>:<i>}:<name>          every other key ({aicm:0}:scheduled, {aicm:0}:batch:...)

Redis Cluster hashes only what is inside the first ``{...}`` of a name, so every
key of a shard lands in one slot and every script touches one slot. The tag
becomes the shard's ``prefix``: a property added below as
``f"{self.prefix}:something"`` is per shard and tagged with no further change.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

#: Field of the ``<prefix>:stats`` hash counting records dead-lettered for one
#: reason: ``dead_lettered:<reason>``.
DEAD_LETTERED_FIELD = "dead_lettered:"

#: Width of one rate bucket, in seconds. One second, so that ``monitor`` can show
#: what flows now (the last 5 s) beside the last minute, and ``status`` can judge
#: a window of a few seconds in tests. A bucket is one small hash written by the
#: RESOLVE script; status reads one per second of its window in one pipeline.
RATE_BUCKET_S = 1
#: How long a rate bucket is kept, in seconds: the longest window status judges.
RATE_KEEP_S = 3600

#: Fields of a rate bucket (``<prefix>:rate:<bucket>``): records settled, and
#: POSTs to /track by how they went.
RATE_DELIVERED = "delivered"
RATE_RETRIED = "retried"
RATE_DEAD_LETTERED = "dead_lettered"
RATE_REQUESTS = "requests"
#: POSTs that got no answer the contract reads: no connection, a timeout, a 5xx,
#: a 429, an unreadable 200 (the transient verdicts, see worker/outcomes.py).
RATE_TRANSPORT_FAILED = "transport_failed"
#: POSTs answered 401/403.
RATE_UNAUTHORIZED = "unauthorized"

#: Fields of the ``<prefix>:health`` hash, each a time on the Redis server's clock.
#: When records were last delivered (set by RESOLVE).
LAST_DELIVERED_AT = "last_delivered_at"
#: When a worker last found nothing queued, scheduled or held (set by housekeeping).
IDLE_AT = "idle_at"
#: When /track last answered 401/403 (RESOLVE).
LAST_UNAUTHORIZED_AT = "last_unauthorized_at"
#: When the current run of 401/403 answers began; removed by an answer that took
#: the key (RESOLVE).
UNAUTHORIZED_SINCE = "unauthorized_since"
#: When batches began to settle with records retried and none delivered; removed
#: by a settle that delivered (RESOLVE). Tells a stall whose records all wait in
#: the scheduled set for a retry (a long outage) from a countdown not yet due.
RETRYING_SINCE = "retrying_since"


@dataclass(frozen=True, slots=True)
class Keys:
    """The Redis key names for one queue and key prefix: one shard's keyspace.

    Build a shard's names with :func:`shard_keys`; ``shard`` is its number (0
    when unsharded), for logs and metrics labels.
    """

    queue: str
    prefix: str
    shard: int = 0

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
    def names(self) -> str:
        """Hash: consumer -> the worker's Celery hostname (``w1@host``)."""
        return f"{self.prefix}:names"

    @property
    def health(self) -> str:
        """Hash: the times status judges a stall by (LAST_DELIVERED_AT, IDLE_AT, ...)."""
        return f"{self.prefix}:health"

    @property
    def rate_prefix(self) -> str:
        """How every rate bucket key begins; RESOLVE appends the bucket number."""
        return f"{self.prefix}:rate:"

    @property
    def redis_settings(self) -> str:
        """Hash: the broker's eviction and persistence settings as a worker last read them."""
        return f"{self.prefix}:redis-settings"

    @property
    def errors(self) -> str:
        """List: the last delivery errors, newest first (for ``monitor``)."""
        return f"{self.prefix}:errors"

    @property
    def imported(self) -> str:
        """Set: the SDK queue rows (by payload digest) already imported."""
        return f"{self.prefix}:imported"

    @property
    def limits(self) -> str:
        """Hash: API-key alias (``:default`` for the default key) -> its verified
        triggered limits as JSON, and ``<alias>@issued_at`` -> the token's issue time."""
        return f"{self.prefix}:limits"

    @property
    def limits_changed(self) -> str:
        """Pub/sub channel: a message (the alias) whenever a set of limits changes."""
        return f"{self.prefix}:limits:changed"

    @property
    def batch_prefix(self) -> str:
        """How every batch key begins (what SWEEP scans for)."""
        return f"{self.prefix}:batch:"

    def rate(self, bucket: int) -> str:
        """Hash: what was settled in rate bucket ``bucket`` (epoch seconds // RATE_BUCKET_S)."""
        return f"{self.rate_prefix}{bucket}"

    def held(self, consumer: str) -> str:
        return f"{self.prefix}:held:{consumer}"

    def batch(self, consumer: str, number: int) -> str:
        return f"{self.prefix}:batch:{consumer}:{number}"


def shard_tag(prefix: str, shard: int) -> str:
    """The hash tag of shard ``shard``: ``{<prefix>:<shard>}``."""
    return f"{{{prefix}:{shard}}}"


def shard_keys(queue: str, prefix: str, shard: int, *, tagged: bool) -> Keys:
    """The key names of shard ``shard``.

    ``tagged=False`` (one shard on a standalone Redis) keeps today's names
    unchanged; ``tagged=True`` puts every name under the shard's hash tag.
    """
    if not tagged:
        return Keys(queue, prefix, shard)
    tag = shard_tag(prefix, shard)
    return Keys(f"{queue}:{tag}", tag, shard)


def dead_lettered_field(reason: str) -> str:
    """The stats field counting records dead-lettered for ``reason``."""
    return DEAD_LETTERED_FIELD + reason


def dead_lettered_by_reason(stats: Mapping[str, int]) -> dict[str, int]:
    """Reason -> count, read from the stats hash's ``dead_lettered:<reason>`` fields."""
    return {
        field.removeprefix(DEAD_LETTERED_FIELD): count
        for field, count in stats.items()
        if field.startswith(DEAD_LETTERED_FIELD)
    }
