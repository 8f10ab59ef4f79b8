"""The batches a worker's delivery threads hold, and handing them back.

A thread registers a batch here before Redis does (FETCH) and forgets it only
after Redis did (RESOLVE or RELEASE). So at any moment what Redis lists as this
worker's is a subset of what is here, unless the two diverged (a failover
promoted a replica that missed a settle); :meth:`HeldBatches.release_strays`
returns such batches, which the worker's own live lease would otherwise keep
from RECLAIM and SWEEP for good. That check reads Redis first and this memory
second: the other way round, a batch a thread took between the two reads
looked like a stray and was handed back under the thread.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import redis

from aicm_tasks.broker.records import RecordStore

logger = logging.getLogger(__name__)


class HeldBatches:
    """Batch key -> the store (shard) it lives in, for one worker (``consumer``)."""

    def __init__(self, consumer: str) -> None:
        self.consumer = consumer
        self._held: dict[str, RecordStore] = {}
        #: Batches whose hand-back failed (their shard did not answer), tried
        #: again by the delivery threads until it does.
        self._to_hand_back: dict[str, RecordStore] = {}
        self._lock = threading.Lock()

    def add(self, batch_key: str, store: RecordStore) -> None:
        with self._lock:
            self._held[batch_key] = store

    def discard(self, batch_key: str) -> None:
        with self._lock:
            self._held.pop(batch_key, None)

    def items(self) -> list[tuple[str, RecordStore]]:
        with self._lock:
            return list(self._held.items())

    def hand_back_if_unsettled(self, store: RecordStore, batch_key: str) -> None:
        """A batch interrupted before it was settled goes back to the queue.

        Left alone it would stay held under a lease this live worker keeps
        renewing, so nobody would ever reclaim it. When its shard does not
        answer, it waits (still held, still covered by our lease) for
        :meth:`retry_hand_backs` while the thread serves the other shards.
        """
        with self._lock:
            if batch_key not in self._held:
                return
        try:
            store.release(self.consumer, batch_key)
        except redis.RedisError as exc:
            logger.warning(
                "broker error (%s) while trying to hand back an interrupted batch; "
                "trying again while serving the other shards",
                exc,
            )
            with self._lock:
                self._to_hand_back[batch_key] = store
            return
        self.discard(batch_key)

    def retry_hand_backs(self, ready: Callable[[RecordStore], bool]) -> None:
        """Hand back the interrupted batches of the shards ``ready`` says answer again."""
        with self._lock:
            waiting = list(self._to_hand_back.items())
        for batch_key, store in waiting:
            if not ready(store):
                continue
            with self._lock:
                if self._to_hand_back.pop(batch_key, None) is None:
                    continue  # another thread took it
            self.hand_back_if_unsettled(store, batch_key)

    def release_strays(self, store: RecordStore) -> int:
        """Hand back batches ``store`` lists as ours that no thread holds; returns
        how many records went back.

        Redis's list is read before this memory, never after: a thread adds its
        batch here before FETCH registers it in Redis and forgets it only after
        RESOLVE or RELEASE removed it there, so every key Redis listed at the
        first read is still here at the second unless it was settled meanwhile
        (and releasing a settled key moves nothing: it was deleted). Read in the
        other order, a batch a thread took between the two reads was handed back
        under it: posted, refused at settle, and posted again (every record of
        a full batch twice, tests/unit/worker/test_held.py).
        """
        listed = store.client.smembers(store.keys.held(self.consumer))
        names = {b.decode() if isinstance(b, bytes) else str(b) for b in listed}
        with self._lock:
            strays = sorted(names - set(self._held))
        returned = 0
        for batch_key in strays:
            returned += store.release(self.consumer, batch_key)
        if returned:
            logger.warning(
                "returned %d records of batches shard %d listed as ours but no thread held "
                "(a failover lost their settle); they are delivered again",
                returned,
                store.keys.shard,
            )
        return returned
