"""The delivery loop a worker process runs: fetch a batch, deliver it, settle it.

:class:`DeliveryService` owns a few delivery threads and one housekeeping
thread (:mod:`aicm_tasks.worker.housekeeping`). With several shards
(:mod:`aicm_tasks.broker.topology`) each batch is taken from the next shard in
turn, so every worker consumes every shard and none needs a coordinator; a
shard whose Redis fails is skipped, backing off, while the others are served. It knows Redis (through :class:`~aicm_tasks.broker.records.RecordStore`) and
the transport, but not Celery: the bootstep in :mod:`aicm_tasks.worker.bootstep`
starts and stops it.
"""

from __future__ import annotations

import itertools
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence

import redis

from aicm_tasks.broker.records import RecordStore
from aicm_tasks.broker.redis_settings import CHECK_INTERVAL_S, Finding
from aicm_tasks.broker.resolution import Resolution
from aicm_tasks.worker.batches import close_all, log_batch, process, timed
from aicm_tasks.worker.held import HeldBatches
from aicm_tasks.worker.housekeeping import Housekeeping
from aicm_tasks.worker.observe import BatchReport, Observer, Observers
from aicm_tasks.worker.outcomes import Post
from aicm_tasks.worker.retry import (
    REDIS_RETRY_MAX_S,
    REDIS_RETRY_MIN_S,
    BackoffPolicy,
    next_pause_s,
)
from aicm_tasks.worker.shards import ShardTurns

logger = logging.getLogger(__name__)

#: Longest single wait for the queue, so a stop request is noticed quickly.
MAX_WAIT_S = 1.0
#: Shortest wait on one shard's queue when several are idle, in seconds (the
#: wait is MAX_WAIT_S shared between shards: a record on another shard waits
#: at most one round of them).
MIN_SHARD_WAIT_S = 0.1
#: While a batch fills, how often to take what has arrived, in seconds.
GATHER_POLL_S = 0.02
#: During shutdown, how long to keep trying to settle a batch while Redis is
#: unreachable; after that it stays held and returns when the lease expires.
SETTLE_GIVE_UP_WHEN_STOPPING_S = 10.0

_EMPTY = Resolution()


class DeliveryService:
    """Delivery threads plus housekeeping, for one worker process."""

    def __init__(
        self,
        store: RecordStore | Sequence[RecordStore],
        post: Post | None,
        *,
        batch_size: int,
        flush_interval_s: float,
        concurrency: int,
        policy: BackoffPolicy,
        auth_retry_interval_s: float,
        redelivery_timeout_s: float,
        observers: Sequence[Observer] = (),
        aliases: Mapping[str, Post] | None = None,
        settings_check_interval_s: float = CHECK_INTERVAL_S,
        on_stopped: Sequence[Callable[[], None]] = (),
        background: Sequence[Callable[[threading.Event], None]] = (),
        name: str = "",
    ) -> None:
        #: Every shard's store (one unless sharded); ``store`` is the first.
        self.stores = [store] if isinstance(store, RecordStore) else list(store)
        if not self.stores:
            raise ValueError("DeliveryService needs at least one RecordStore")
        self.store = self.stores[0]
        #: More threads to run until the service stops (the triggered-limits poll),
        #: each given the stop event.
        self.background = tuple(background)
        #: The worker's Celery hostname (``w1@host``), as Flower names it; status
        #: shows it beside the consumer id. Empty outside a Celery worker.
        self.name = name
        #: Called once every thread has stopped (the transport's close): never
        #: while a delivery thread that outlived the grace period may still POST.
        self.on_stopped = tuple(on_stopped)
        self.observers = Observers(observers)
        #: How batches are sent: with the default key (None: no default key),
        #: and with each API-key alias's key.
        self.post = timed(post, self.observers) if post is not None else None
        self.aliases = {
            alias: timed(send, self.observers) for alias, send in (aliases or {}).items()
        }
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self.concurrency = concurrency
        self.policy = policy
        self.auth_retry_interval_s = auth_retry_interval_s
        self.lease_s = redelivery_timeout_s
        self.consumer = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        #: Batches taken and not settled yet, with the store (shard) each lives in.
        self.held = HeldBatches(self.consumer)
        self.housekeeping = Housekeeping(
            self.stores,
            self.consumer,
            name=name,
            lease_s=self.lease_s,
            observers=self.observers,
            settings_check_interval_s=settings_check_interval_s,
            release_strays=self.held.release_strays,
        )
        self._numbers = itertools.count()
        self._turns = ShardTurns(len(self.stores))
        self._wait_s = (
            MAX_WAIT_S
            if len(self.stores) == 1
            else max(MIN_SHARD_WAIT_S, MAX_WAIT_S / len(self.stores))
        )
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        #: One gather at a time per shard (see _gather). One lock for every shard
        #: made a batch filling from a trickle on one shard hold up the others:
        #: at 20 records/s over 3 shards, e2e p99 was 3.0 s (3 flush intervals)
        #: against 1.0 s on one Redis.
        self._gather_locks = {id(store): threading.Lock() for store in self.stores}
        #: Shards found empty since records were last found on any: a thread
        #: waits on its shard only once every shard is in it. Read and written
        #: under different shards' locks: a race costs at most one wait too many
        #: or too few, never a record.
        self._found_empty: set[int] = set()

    # -- lifecycle ---------------------------------------------------------------
    def start(self) -> None:
        """Register the lease and start the threads."""
        self._stop.clear()
        # Waits until one shard answers; one that does not is registered by
        # housekeeping (and by its first fetch) once it does.
        self._retrying("register lease", self._register_lease)
        housekeeping = threading.Thread(
            target=self.housekeeping.run, args=(self._stop,), name="aicm-housekeeping", daemon=True
        )
        self._threads = [housekeeping]
        for n in range(self.concurrency):
            thread = threading.Thread(
                target=self._deliver_loop, name=f"aicm-delivery-{n}", daemon=True
            )
            self._threads.append(thread)
        # After the delivery threads: stop() reads those as _threads[1:1 + concurrency].
        for n, run in enumerate(self.background):
            self._threads.append(
                threading.Thread(
                    target=run, args=(self._stop,), name=f"aicm-background-{n}", daemon=True
                )
            )
        for thread in self._threads:
            thread.start()
        logger.info(
            "delivery started: worker=%s consumer=%s queue=%s shards=%d batch_size=%d "
            "flush_interval_s=%.3g threads=%d",
            self.name or "-",
            self.consumer,
            self.store.keys.queue,
            len(self.stores),
            self.batch_size,
            self.flush_interval_s,
            self.concurrency,
        )

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop fetching, let in-flight batches finish, hand back anything left."""
        self._stop.set()
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        for batch_key, store in self.held.items():
            try:
                returned = store.release(self.consumer, batch_key)
                logger.warning("handed %d records back to the queue at shutdown", returned)
            except redis.RedisError as exc:
                logger.error(
                    "could not hand back %s (%s); it returns after the lease expires",
                    batch_key,
                    exc,
                )
        if not any(t.is_alive() for t in self._threads[1 : 1 + self.concurrency]):
            for store in self.stores:
                try:
                    store.drop_lease(self.consumer)
                except redis.RedisError as exc:
                    logger.warning(
                        "could not drop lease at shutdown (shard %d): %s", store.keys.shard, exc
                    )
        if not any(t.is_alive() for t in self._threads):
            close_all(self.on_stopped)
        logger.info("delivery stopped: consumer=%s", self.consumer)

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    # -- delivery ----------------------------------------------------------------
    def _register_lease(self) -> bool:
        registered = False
        for store in self.stores:
            try:
                registered = (
                    store.renew_lease(self.consumer, self.lease_s, self.name) > 0 or registered
                )
            except redis.RedisError as exc:
                if len(self.stores) == 1:
                    raise
                logger.warning("shard %d does not answer yet (%s)", store.keys.shard, exc)
        if not registered:
            raise redis.ConnectionError("no shard answered")
        return True

    def _deliver_loop(self) -> None:
        while not self._stop.is_set():
            self.held.retry_hand_backs(lambda store: self._turns.ready(self.stores.index(store)))
            index = self._turns.next()
            if index is None:
                self._stop.wait(self._turns.until_one_is_ready_s())
                continue
            store = self.stores[index]
            batch_key = store.keys.batch(self.consumer, next(self._numbers))
            self.held.add(batch_key, store)
            try:
                self._run_one_batch(store, batch_key)
                self._turns.succeeded(index)
            except redis.RedisError as exc:
                pause_s = self._turns.failed(index)
                logger.warning(
                    "broker error in delivery on shard %d (%s); retrying it in %.1fs",
                    store.keys.shard,
                    exc,
                    pause_s,
                )
            except Exception:  # a bug must not kill the thread
                logger.exception("unexpected error in delivery; the batch goes back to the queue")
                self._stop.wait(REDIS_RETRY_MAX_S)
            finally:
                self.held.hand_back_if_unsettled(store, batch_key)

    def _run_one_batch(self, store: RecordStore, batch_key: str) -> None:
        raw, owned = self._gather(store, batch_key)
        if not owned:
            # Reclaimed while it filled (a pause longer than the lease): what was
            # taken before is back in the queue already; not sent, so no duplicates.
            returned = store.release(self.consumer, batch_key)
            self.held.discard(batch_key)
            logger.warning(
                "batch %s was reclaimed while it filled (lease lost); %d records were "
                "not sent and %d stray ones went back to the queue",
                batch_key,
                len(raw),
                returned,
            )
            return
        if not raw:
            # Nothing arrived: the (empty) batch key is still registered; settle it.
            store.resolve(self.consumer, batch_key, _EMPTY)
            self.held.discard(batch_key)
            return
        started = time.monotonic()
        done = process(
            raw,
            self.post,
            self.aliases,
            self.policy,
            auth_retry_interval_s=self.auth_retry_interval_s,
        )
        resolution = done.resolution
        settled = self._retrying(
            "settle batch", lambda: store.resolve(self.consumer, batch_key, resolution)
        )
        self.held.discard(batch_key)
        elapsed_s = time.monotonic() - started
        if not settled:
            logger.warning(
                "batch %s was reclaimed while held (lease lost); its %d records will be "
                "delivered again by whoever takes them",
                batch_key,
                len(raw),
            )
            return
        log_batch(
            done.summary, elapsed_s=elapsed_s, auth_retry_interval_s=self.auth_retry_interval_s
        )
        self.observers.batch_settled(BatchReport(batch_key, done.summary, elapsed_s, done.items))

    def _gather(self, store: RecordStore, batch_key: str) -> tuple[list[bytes], bool]:
        """Take up to batch_size records: all at once from a backlog, or what
        arrives within flush_interval_s of the first one. Returns the records
        and whether the batch is still ours (False: reclaimed while it filled).

        One thread gathers at a time from each shard, so a trickle of records
        fills one batch after another in arrival order instead of several
        half-empty batches that all wait out the flush interval; other shards
        are gathered meanwhile. While gathering it polls in bulk every
        GATHER_POLL_S rather than waiting record by record: one Redis round trip
        per poll, not per record.
        """
        lock = self._gather_locks[id(store)]
        # With one shard a thread waits its turn, as it always has. With several
        # it waits at most one shard's share of a wait (a third of a second with
        # 3 shards) behind a batch filling from a trickle, then goes on to the
        # next shard; the empty batch it settles costs one round trip.
        if not lock.acquire(timeout=-1 if len(self.stores) == 1 else self._wait_s):
            return [], True
        try:
            return self._gather_locked(store, batch_key)
        finally:
            lock.release()

    def _gather_locked(self, store: RecordStore, batch_key: str) -> tuple[list[bytes], bool]:
        raw = store.fetch(self.consumer, batch_key, self.batch_size, self.lease_s) or []
        if not raw:
            self._found_empty.add(store.keys.shard)
            if len(self._found_empty) < len(self.stores):
                # Another shard may hold a backlog: look there before waiting
                # here. Waiting on an empty shard while another's backlog
                # stood made draining 10,000 records split 4/3/3 over 3
                # shards run at 7k records/s instead of ~70k (bench cluster).
                return [], True
            first = store.wait_one(batch_key, self._wait_s)
            if first is None:
                return [], True
            raw = [first]
        self._found_empty.clear()
        flush_at = time.monotonic() + self.flush_interval_s
        while len(raw) < self.batch_size and not self._stop.is_set():
            remaining_s = flush_at - time.monotonic()
            if remaining_s <= 0:
                break
            self._stop.wait(min(remaining_s, GATHER_POLL_S))
            more = store.fetch(
                self.consumer, batch_key, self.batch_size - len(raw), self.lease_s, first=False
            )
            if more is None:
                return raw, False
            raw += more
        return raw, True

    # -- housekeeping ------------------------------------------------------------
    def check_redis_settings(self) -> list[Finding]:
        """Read the broker's eviction and persistence settings, log what is wrong,
        tell observers (see :meth:`Housekeeping.check_redis_settings`)."""
        return self.housekeeping.check_redis_settings()

    def _retrying(self, what: str, action: Callable[[], bool | None]) -> bool:
        """Run a broker write until it succeeds: a decided fate must reach Redis.

        Gives up (returns False) only while stopping, after
        SETTLE_GIVE_UP_WHEN_STOPPING_S: the batch then stays held in Redis and is
        redelivered when the lease expires, so nothing is lost.
        """
        pause_s = REDIS_RETRY_MIN_S
        started = time.monotonic()
        while True:
            try:
                result = action()
                return True if result is None else bool(result)
            except redis.RedisError as exc:
                if (
                    self._stop.is_set()
                    and time.monotonic() - started > SETTLE_GIVE_UP_WHEN_STOPPING_S
                ):
                    logger.error(
                        "gave up trying to %s at shutdown (%s); records stay held", what, exc
                    )
                    return False
                logger.warning(
                    "broker error (%s) while trying to %s; retrying in %.1fs", exc, what, pause_s
                )
                time.sleep(pause_s)
                pause_s = next_pause_s(pause_s)
