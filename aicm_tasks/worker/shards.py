"""How a worker's delivery threads share the shards: each batch from the next
shard in turn, a shard whose Redis fails skipped while it backs off alone.

Kept apart from :mod:`aicm_tasks.worker.service` so the delivery loop reads the
same with one shard (today's path: the one shard every time) or several.
"""

from __future__ import annotations

import itertools
import threading
import time

from aicm_tasks.worker.retry import REDIS_RETRY_MIN_S, next_pause_s


class ShardTurns:
    """Round-robin over ``count`` shards with a backoff per shard."""

    def __init__(self, count: int) -> None:
        self.count = count
        self._turn = itertools.count()
        #: Per shard: when it may be tried again (monotonic), and the pause the
        #: next error adds.
        self._retry_at = [0.0] * count
        self._pause_s = [REDIS_RETRY_MIN_S] * count
        self._lock = threading.Lock()

    def next(self) -> int | None:
        """The next shard in turn that is not backing off; None when all are."""
        now = time.monotonic()
        for _ in range(self.count):
            index = next(self._turn) % self.count
            if self._retry_at[index] <= now:
                return index
        return None

    def ready(self, index: int) -> bool:
        """Whether shard ``index`` may be tried now."""
        return self._retry_at[index] <= time.monotonic()

    def until_one_is_ready_s(self) -> float:
        """How long until some shard may be tried again (seconds, at least 10 ms)."""
        return max(0.01, min(self._retry_at) - time.monotonic())

    def failed(self, index: int) -> float:
        """Shard ``index`` failed: back it off; returns the pause (seconds)."""
        with self._lock:
            pause_s = self._pause_s[index]
            self._retry_at[index] = time.monotonic() + pause_s
            self._pause_s[index] = next_pause_s(pause_s)
        return pause_s

    def succeeded(self, index: int) -> None:
        """Shard ``index`` answered: its next error starts the backoff again."""
        self._pause_s[index] = REDIS_RETRY_MIN_S
