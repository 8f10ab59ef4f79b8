"""The worker's housekeeping thread: its lease, due retries, dead workers' batches.

:class:`Housekeeping` runs in one thread of the :class:`~aicm_tasks.worker.service.DeliveryService`,
beside its delivery threads: about once a second it renews this worker's lease
(so nobody reclaims its batches), promotes due retries to the queue and
reclaims the batches of workers whose lease expired; less often it sweeps for
batch keys no lease covers, forgets ``seen`` entries of gone workers, reads the
queue depths for observers and checks the Redis server's settings and clock.

With several shards it does all of it on each shard, on that shard's clock (a
lease in shard ``i`` is decided by the Redis that holds shard ``i``'s records),
and a shard whose Redis fails backs off alone: the others' leases are still
renewed every round.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Sequence

import redis

from aicm_tasks.broker.records import RecordStore
from aicm_tasks.broker.redis_settings import Finding, judge_settings, read_settings
from aicm_tasks.worker.observe import Observers
from aicm_tasks.worker.retry import next_pause_s

logger = logging.getLogger(__name__)

#: How often the housekeeping thread renews the lease, promotes due retries and
#: reclaims batches of dead workers, at most, in seconds.
HOUSEKEEPING_INTERVAL_S = 1.0
#: Housekeeping rounds between two depth readings: for observers (gauges), and
#: to note IDLE_AT when nothing waits (status judges a stall from the later of
#: that and the last delivery, so its precision is this many seconds).
DEPTH_EVERY_ROUNDS = 5
#: Housekeeping rounds between two sweeps for batch keys no lease covers (a
#: SCAN of the database: one round trip per 1,000 keys in it).
SWEEP_EVERY_ROUNDS = 30
#: Housekeeping rounds between two checks that every batch Redis lists as this
#: worker's is one it holds (see DeliveryService.release_strays).
STRAYS_EVERY_ROUNDS = 5
#: ``seen`` entries of workers gone (no lease) this long are forgotten, in seconds.
FORGET_UNSEEN_AFTER_S = 3600.0
#: A host clock this far from the Redis server's is logged (leases do not
#: depend on it; dead-letter times, ``eta`` and logs do), in seconds.
CLOCK_SKEW_WARN_S = 2.0
#: At most one clock-skew warning per this many seconds.
CLOCK_SKEW_WARN_EVERY_S = 600.0


class Housekeeping:
    """The periodic broker chores of one worker process (``consumer``), on every shard."""

    def __init__(
        self,
        store: RecordStore | Sequence[RecordStore],
        consumer: str,
        *,
        name: str = "",
        lease_s: float,
        observers: Observers,
        settings_check_interval_s: float,
        release_strays: Callable[[RecordStore], int] | None = None,
    ) -> None:
        self.stores = [store] if isinstance(store, RecordStore) else list(store)
        self.store = self.stores[0]
        self.consumer = consumer
        self.name = name
        self.lease_s = lease_s
        self.observers = observers
        self.settings_check_interval_s = settings_check_interval_s
        self.release_strays = release_strays
        # Per shard: each shard's Redis has its own settings.
        self._last_findings: dict[int, list[Finding]] = {}
        self._skew_warned_at = -CLOCK_SKEW_WARN_EVERY_S

    def run(self, stop: threading.Event) -> None:
        """Do the chores every HOUSEKEEPING_INTERVAL_S until ``stop`` is set.

        A broker error backs off (doubling) and tries again: this thread must
        outlive any Redis outage, since it renews the lease. Each shard backs
        off on its own."""
        n = len(self.stores)
        pause_s = [HOUSEKEEPING_INTERVAL_S] * n
        retry_at = [0.0] * n
        checked_at = [-float("inf")] * n
        rounds = 0
        while not stop.wait(HOUSEKEEPING_INTERVAL_S if n > 1 else pause_s[0]):
            rounds += 1
            depths: list[dict[str, int]] = []
            for index, store in enumerate(self.stores):
                if retry_at[index] > time.monotonic():
                    continue
                try:
                    check = time.monotonic() - checked_at[index] >= self.settings_check_interval_s
                    if check:
                        checked_at[index] = time.monotonic()
                    depth = self._round(store, rounds, check_settings=check)
                    if depth is not None:
                        depths.append(depth)
                        if n > 1 and self.observers:
                            self.observers.shard_depth(store.keys.shard, depth)
                    pause_s[index] = HOUSEKEEPING_INTERVAL_S
                    if n > 1 and self.observers:
                        self.observers.shard_answered(store.keys.shard, True)
                except redis.RedisError as exc:
                    logger.warning("broker error in housekeeping (shard %d): %s", index, exc)
                    pause_s[index] = next_pause_s(pause_s[index])
                    retry_at[index] = time.monotonic() + pause_s[index] - HOUSEKEEPING_INTERVAL_S
                    if n > 1 and self.observers:
                        self.observers.shard_answered(store.keys.shard, False)
            if depths and self.observers:
                self.observers.housekeeping(sum_depths(depths))

    def _round(
        self, store: RecordStore, rounds: int, *, check_settings: bool
    ) -> dict[str, int] | None:
        """One round of chores on one shard; its depth on the rounds that read it."""
        server_now = store.renew_lease(self.consumer, self.lease_s, self.name)
        self._check_clock(server_now)
        if check_settings:
            self._check_redis_settings_safely(store)
        depth = None
        if rounds % DEPTH_EVERY_ROUNDS == 1:
            depth = self._read_depth(store)
        store.promote_due()
        if self.release_strays is not None and rounds % STRAYS_EVERY_ROUNDS == 0:
            self.release_strays(store)
        reclaimed = store.reclaim_expired(self.consumer)
        if reclaimed:
            logger.warning("reclaimed %d records from workers whose lease expired", reclaimed)
        if rounds % SWEEP_EVERY_ROUNDS == 1:
            swept = store.sweep()
            if swept:
                logger.warning(
                    "returned %d records to the queue from batch keys no lease covered",
                    swept,
                )
            store.forget_unseen(FORGET_UNSEEN_AFTER_S)
        return depth

    @staticmethod
    def _read_depth(store: RecordStore) -> dict[str, int]:
        """One shard's depths (for observers), noting IDLE_AT on that shard when
        nothing waits there (no record queued, held or due): from then on, records
        that wait undelivered for the health window are a stall (see
        :func:`aicm_tasks.broker.health.judge`; each shard's mark is on its clock)."""
        depth = store.depth()
        if depth["queued"] == 0 and depth["held"] == 0:
            store.note_idle()
        return depth

    def _check_clock(self, server_now: float) -> None:
        """Warn when this host's clock is far from the Redis server's.

        Leases and retry times are decided on the server's clock, so skew costs
        no record; but dead-letter times, ``eta`` of producers and log times
        come from hosts' clocks.
        """
        skew_s = time.time() - server_now
        if abs(skew_s) < CLOCK_SKEW_WARN_S:
            return
        now = time.monotonic()
        if now - self._skew_warned_at < CLOCK_SKEW_WARN_EVERY_S:
            return
        self._skew_warned_at = now
        logger.warning(
            "this host's clock is %+.1fs off the Redis server's; leases use the server's "
            "clock, but timestamps this host writes (dead-letter times, logs) are off by as much",
            skew_s,
        )

    def _check_redis_settings_safely(self, store: RecordStore) -> None:
        """A bug in the check must not stop this thread: it renews the lease."""
        try:
            self.check_redis_settings(store)
        except redis.RedisError:
            raise
        except Exception:
            logger.exception("could not check the Redis settings")

    def check_redis_settings(self, store: RecordStore | None = None) -> list[Finding]:
        """Read the broker's eviction and persistence settings, log what is wrong, tell observers.

        An error (an evicting policy) is logged at every check, since records
        are at risk for as long as it lasts; a warning only when the findings
        change, so a Redis without AOF gives one line, not one a minute.
        ``store``: the shard whose Redis to read (default: the first). With
        several shards, each finding names its shard (observers, such as the
        Flower events' failed ``check_broker`` task, get each shard's own).
        """
        store = store or self.store
        settings = read_settings(store.server_client(), read_by=self.consumer)
        findings = judge_settings(settings)
        if len(self.stores) > 1:
            findings = [
                dataclasses.replace(f, message=f"shard {store.keys.shard}: {f.message}")
                for f in findings
            ]
        changed = findings != self._last_findings.get(store.keys.shard)
        self._last_findings[store.keys.shard] = findings
        for finding in findings:
            if finding.level == "error":
                logger.error("Redis settings put records at risk: %s", finding.message)
            elif changed:
                logger.warning("Redis settings: %s", finding.message)
        if changed and not findings:
            logger.info(
                "Redis settings: maxmemory-policy %s, AOF on (read with %s)",
                settings.maxmemory_policy,
                settings.source,
            )
        self.observers.redis_settings_read(settings, findings, store.keys.shard)
        return findings


def sum_depths(depths: Sequence[dict[str, int]]) -> dict[str, int]:
    """The depths of every shard as one pipeline's: counts added, workers the
    most any shard saw (each worker holds a lease in every shard)."""
    total: dict[str, int] = {}
    for depth in depths:
        for name, value in depth.items():
            total[name] = (
                max(total.get(name, 0), value)
                if name == "workers"
                else (total.get(name, 0) + value)
            )
    return total
