"""The httpx client for ``POST /track``, and nothing else.

One pooled, keep-alive client per worker process, shared by its delivery
threads (httpx.Client is thread-safe). The API keys live only in this object,
sent as each request's Authorization header: never logged, never written to
Redis. Records name an alias (``AICM_API_KEYS``), never a key.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping

import httpx

from aicm_tasks.worker.outcomes import BatchVerdict, classify_exception, classify_response

logger = logging.getLogger(__name__)

Post = Callable[[bytes], BatchVerdict]


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


class TrackTransport:
    """Sends batch bodies to the ``/track`` URL and classifies the answers.

    ``api_key`` is the default key; ``keys`` maps API-key aliases to keys. All
    of them share one connection pool: the key is a per-request header.
    """

    def __init__(
        self,
        url: str,
        api_key: str | None,
        *,
        keys: Mapping[str, str] | None = None,
        timeout_s: float = 30.0,
        max_connections: int = 8,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = url
        self._auth = {alias: _bearer(key) for alias, key in (keys or {}).items()}
        self._default = _bearer(api_key) if api_key else None
        self._client = httpx.Client(
            timeout=httpx.Timeout(timeout_s),
            headers={"Content-Type": "application/json"},
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
            transport=transport,
        )

    @property
    def aliases(self) -> list[str]:
        """The API-key aliases this transport holds a key for."""
        return sorted(self._auth)

    def poster(self) -> Post | None:
        """The ``post`` callable for the default key; None when there is none."""
        return self.post if self._default is not None else None

    def sender(self, alias: str) -> Post:
        """The ``post`` callable that sends with the key of ``alias``."""
        return functools.partial(self._post, headers=self._auth[alias])

    def post(self, body: bytes) -> BatchVerdict:
        """POST one batch body with the default key; never raises for HTTP or network faults."""
        return self._post(body, headers=self._default or {})

    def _post(self, body: bytes, headers: dict[str, str]) -> BatchVerdict:
        try:
            response = self._client.post(self.url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            return classify_exception(exc)
        return classify_response(response.status_code, response.headers, response.content)

    def close(self) -> None:
        """Close the pooled connections."""
        self._client.close()

    def __repr__(self) -> str:  # never show the key
        return f"TrackTransport(url={self.url!r})"
