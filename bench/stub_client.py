"""The benchmark's side of the stub: reset it, read its counters, wait for records."""

from __future__ import annotations

import logging
import time
from typing import Any

import httpx

logger = logging.getLogger(__name__)

#: How often a waiter asks the stub how many records it has.
POLL_INTERVAL_S = 0.05


class StubStalledError(RuntimeError):
    """The stub's count stopped growing before it reached what was expected."""


class StubClient:
    """Talks to one running stub server over loopback."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.track_url = f"{base_url}/api/v1/track"
        self._client = httpx.Client(base_url=base_url, timeout=60.0)

    def reset(self) -> None:
        """Forget all records and arrival times."""
        self._client.post("/reset").raise_for_status()

    def stats(self) -> dict[str, Any]:
        """Counters: records, unique, requests, first/last(_new)_arrival."""
        response = self._client.get("/stats")
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    def arrivals(self) -> dict[str, float]:
        """First arrival time (epoch s) per response_id."""
        response = self._client.get("/arrivals")
        response.raise_for_status()
        result: dict[str, float] = response.json()
        return result

    def latency(self, published: dict[str, float]) -> dict[str, Any]:
        """Latency percentiles (ms) of ``{response_id: publish epoch s}`` against arrivals."""
        response = self._client.post("/latency", json=published)
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    def wait_for(self, unique: int, *, timeout_s: float, stall_s: float = 30.0) -> dict[str, Any]:
        """Poll until the stub has ``unique`` distinct response_ids; return its stats.

        Raises :class:`StubStalledError` when the count does not grow for
        ``stall_s`` seconds, or ``timeout_s`` passes.
        """
        deadline = time.monotonic() + timeout_s
        last_count, last_change = -1, time.monotonic()
        while True:
            stats = self.stats()
            now = time.monotonic()
            if stats["unique"] >= unique:
                return stats
            if stats["unique"] != last_count:
                last_count, last_change = stats["unique"], now
            if now - last_change > stall_s or now > deadline:
                raise StubStalledError(
                    f"stub has {stats['unique']:,} of {unique:,} records "
                    f"(no progress for {now - last_change:.0f}s)"
                )
            time.sleep(POLL_INTERVAL_S)

    def close(self) -> None:
        """Close the HTTP client."""
        self._client.close()
