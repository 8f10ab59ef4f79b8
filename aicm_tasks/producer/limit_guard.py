"""Usage limits at the call site: the in-process snapshot of the broker's set.

Workers keep the verified triggered limits in the broker
(:mod:`aicm_tasks.broker.limits`). A producer process reads them into a
snapshot at most every ``AICM_LIMITS_REFRESH_MS`` (default 500 ms), so a check
is a dictionary lookup, never a round trip per call; a thread subscribed to
the ``limits:changed`` channel drops the snapshot as soon as a worker stores a
new set, so the next check reads it (in practice well under the refresh
interval). Both are started again in a forked child (gunicorn and Celery
prefork children fork after the parent may have checked).

With ``AICM_LIMITS_ENABLED`` the producer raises
:class:`~aicm_tasks.errors.UsageLimitExceeded` after publishing a record that
matches (:meth:`LimitGuard.enforce`), as the SDK does: the record is published,
since it was spent. :mod:`aicm_tasks.producer.limits` has the pre-flight check.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from typing import Protocol

import redis

from aicm_tasks.broker.limits import source_of
from aicm_tasks.broker.records import BrokerClient
from aicm_tasks.errors import usage_limit_exceeded_class
from aicm_tasks.limits import TriggeredLimit, matching
from aicm_tasks.producer.record import Record

logger = logging.getLogger(__name__)

#: Longest pause between two attempts of the subscriber to reconnect, in seconds.
SUBSCRIBER_MAX_PAUSE_S = 30.0

Snapshot = dict[str, tuple[TriggeredLimit, ...]]


class LimitReader(Protocol):
    """Reads every source's triggered limits: :class:`~aicm_tasks.broker.limits.LimitStore` is one."""

    def read(self) -> Snapshot: ...


class NoLimitStore:
    """The limits of a broker that keeps none yet: RabbitMQ (settings refuse
    ``AICM_LIMITS_ENABLED`` there). Always empty, and says so once per process,
    without a connection to anything."""

    def __init__(self, why: str) -> None:
        self.why = why
        self._told = False

    def read(self) -> Snapshot:
        """No limits."""
        if not self._told:
            self._told = True
            logger.warning("no triggered limits are checked: %s", self.why)
        return {}


class LimitGuard:
    """The triggered limits as this process last read them from the broker.

    ``store`` reads the set; ``refresh_s`` is how old the snapshot may get;
    ``subscriber_client`` (a factory, called in each process that checks) gives
    the connection that listens on ``channel`` for changes (None: no listener,
    the refresh interval alone bounds staleness).
    """

    def __init__(
        self,
        store: Callable[[], LimitReader],
        *,
        refresh_s: float,
        channel: str | None = None,
        subscriber_client: Callable[[], BrokerClient] | None = None,
    ) -> None:
        self._store_factory = store
        self.refresh_s = refresh_s
        self.channel = channel
        self._subscriber_client = subscriber_client
        self._snapshot: Snapshot = {}
        self._read_at = -math.inf
        #: Counts nudges: a nudge that lands while a read is under way makes that
        #: read count as stale (it may have missed the change).
        self._nudges = 0
        #: Counts reads done (or failed), so a check that waited for one does not read again.
        self._attempts = 0
        self._pid = -1
        self._lock = threading.Lock()
        #: Starts the listener once per process.
        self._start_lock = threading.Lock()
        # In a forked child the copied snapshot is read again at the next check,
        # and a listener of its own is started then: a hook, not an os.getpid()
        # per check (a system call on the hot path).
        reference = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _forget_in_child(reference))

    # -- the snapshot -------------------------------------------------------------
    def snapshot(self) -> Snapshot:
        """Every source's limits, read again from the broker when older than ``refresh_s``."""
        if time.monotonic() - self._read_at >= self.refresh_s:
            self._refresh()
        return self._snapshot

    def invalidate(self) -> None:
        """Make the next check read the broker (the subscriber calls this)."""
        self._nudges += 1
        self._read_at = -math.inf

    def _refresh(self) -> None:
        if self._pid != os.getpid():
            self._after_fork()
        # Only one thread reads; the others use the snapshot they have, unless
        # there is none yet (the first check must not pass for want of a read).
        attempts = self._attempts
        if not self._lock.acquire(blocking=self._read_at == -math.inf):
            return
        try:
            if self._attempts != attempts:
                # Another thread read (or failed to) while this one waited: take
                # its answer. Reading again made the Nth of N checks waiting on a
                # broker that does not answer wait N reads, each up to the
                # publish budget.
                return
            read_at = time.monotonic()
            nudges = self._nudges
            try:
                self._snapshot = self._store_factory().read()
            except redis.RedisError as exc:
                # Keep the last set: a broker that does not answer changes no
                # limit. Tried again after refresh_s, not on every call.
                logger.debug("could not read the triggered limits: %s", exc)
            finally:
                self._attempts += 1
            if nudges == self._nudges:
                self._read_at = read_at
        finally:
            self._lock.release()

    def _after_fork(self) -> None:
        """In a new process (or the first check): a listener of our own, started once
        however many threads find the process new at the same time."""
        with self._start_lock:
            if self._pid == os.getpid():
                return
            self._pid = os.getpid()
            self._read_at = -math.inf
            if self._subscriber_client is not None and self.channel is not None:
                threading.Thread(
                    target=self._listen,
                    args=(self._pid,),
                    name="aicm-limits-subscriber",
                    daemon=True,
                ).start()

    def _forked(self) -> None:
        """The at-fork hook, in the child while it has one thread: fresh locks (the
        fork may have copied one held by a thread that does not exist here). Made
        here, not at the first check: two threads of the child both making one
        swapped the lock under a read, and a release raised RuntimeError."""
        self._lock = threading.Lock()
        self._start_lock = threading.Lock()
        self._pid = -1
        self._read_at = -math.inf

    def _listen(self, pid: int) -> None:
        assert self._subscriber_client is not None and self.channel is not None
        # Built here, off the caller's thread: the class subclasses the SDK's, whose
        # import took about 0.25 s, once, and made the first raise that late.
        usage_limit_exceeded_class()
        pause_s = 0.5
        while self._pid == pid:
            try:
                pubsub = self._subscriber_client().pubsub(  # type: ignore[no-untyped-call]
                    ignore_subscribe_messages=True
                )
                pubsub.subscribe(self.channel)
                # Subscribed: anything stored from now on is announced; what was
                # stored before, the next refresh reads.
                self.invalidate()
                pause_s = 0.5
                for _message in pubsub.listen():
                    self.invalidate()
            except redis.RedisError as exc:
                logger.debug("limits subscriber: %s; again in %.1fs", exc, pause_s)
                self.invalidate()
                time.sleep(pause_s)
                pause_s = min(pause_s * 2, SUBSCRIBER_MAX_PAUSE_S)

    @property
    def fresh(self) -> bool:
        """Whether a check now would not read the broker."""
        return time.monotonic() - self._read_at < self.refresh_s and self._pid == os.getpid()

    # -- checks ---------------------------------------------------------------------
    def check(
        self, service_key: str | None, customer_key: str | None, api_key_alias: str | None = None
    ) -> list[TriggeredLimit]:
        """The limits that stop a record of these keys sent with ``api_key_alias``'s key."""
        limits = self.snapshot().get(source_of(api_key_alias))
        if not limits:
            return []
        return matching(limits, service_key, customer_key, now_epoch_s=time.time())

    def enforce(self, records: Iterable[Record]) -> None:
        """Raise :class:`UsageLimitExceeded` when any of ``records`` matches a limit."""
        snapshot = self.snapshot()
        if not snapshot:  # the common case: nothing triggered anywhere
            return
        found: list[TriggeredLimit] = []
        now = time.time()
        for record in records:
            limits = snapshot.get(source_of(record.api_key_alias))
            if limits:
                customer_key = record.data.get("customer_key")
                for limit in matching(limits, record.service_key, customer_key, now_epoch_s=now):
                    if limit not in found:
                        found.append(limit)
        if found:
            raise usage_limit_exceeded_class()(found)


def _forget_in_child(reference: weakref.ref[LimitGuard]) -> None:
    guard = reference()
    if guard is not None:
        guard._forked()
