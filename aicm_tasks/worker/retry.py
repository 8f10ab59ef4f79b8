"""Backoff: when an undelivered record gets its next try, and a broker error the next attempt.

Hand-written rather than tenacity: tenacity retries a call inside one process,
while here the wait is a due time written to Redis (the record leaves the
worker and comes back when due), so only the schedule itself is needed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime

#: Jitter draws each delay from [JITTER_FLOOR * d, d], so retries of records that
#: failed together spread out, yet the schedule keeps a guaranteed minimum.
JITTER_FLOOR = 0.8
#: Longest Retry-After honoured, so a misbehaving server cannot park records for days.
MAX_RETRY_AFTER_S = 3600.0


@dataclass(frozen=True, slots=True)
class BackoffPolicy:
    """Exponential backoff with jitter: retry ``n`` (0-based) waits about
    ``min(max_s, base_s * 2**n)`` seconds, at least ``JITTER_FLOOR`` of that."""

    base_s: float = 1.0
    max_s: float = 300.0
    max_retries: int = 25

    def ceiling_s(self, retry: int) -> float:
        """The un-jittered delay before retry number ``retry`` (0-based), in seconds."""
        return min(self.max_s, self.base_s * 2.0 ** min(retry, 64))

    def delay_s(self, retry: int, rng: random.Random | None = None) -> float:
        """A jittered delay before retry number ``retry``, in seconds."""
        ceiling = self.ceiling_s(retry)
        draw = (rng or random).uniform(JITTER_FLOOR, 1.0)
        return ceiling * draw

    def guaranteed_outage_s(self) -> float:
        """The shortest total wait before retries run out: the outage a record
        is certain to ride out before it is dead-lettered as ``retries_exhausted``."""
        return JITTER_FLOOR * sum(self.ceiling_s(n) for n in range(self.max_retries))


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP-date).

    Returns None when absent or unreadable; clamps to [0, MAX_RETRY_AFTER_S].
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        seconds = (when - (now or datetime.now(timezone.utc))).total_seconds()
    if seconds != seconds:  # NaN
        return None
    return max(0.0, min(seconds, MAX_RETRY_AFTER_S))


#: Wait after a Redis error before trying again, growing to the maximum, in seconds.
REDIS_RETRY_MIN_S, REDIS_RETRY_MAX_S = 0.2, 5.0


def next_pause_s(pause_s: float) -> float:
    """The wait after another broker error: doubled, at most REDIS_RETRY_MAX_S.

    The one backoff of the worker's threads against Redis (delivery, settling,
    housekeeping). No jitter: one worker's threads back off from one Redis, and
    a reconnect storm of a few threads per worker is not worth spreading out."""
    return min(pause_s * 2, REDIS_RETRY_MAX_S)
