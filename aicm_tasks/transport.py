"""The httpx client for ``POST /track``, and nothing else.

One pooled, keep-alive client per worker process, shared by its delivery
threads (httpx.Client is thread-safe). The API key lives only in this client's
headers: it is never logged and never written to Redis.
"""

from __future__ import annotations

import logging

import httpx

from aicm_tasks.outcomes import BatchVerdict, classify_exception, classify_response

logger = logging.getLogger(__name__)


class TrackTransport:
    """Sends batch bodies to the ``/track`` URL and classifies the answers."""

    def __init__(
        self,
        url: str,
        api_key: str,
        *,
        timeout_s: float = 30.0,
        max_connections: int = 8,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = url
        self._client = httpx.Client(
            timeout=httpx.Timeout(timeout_s),
            headers={"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"},
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
            transport=transport,
        )

    def post(self, body: bytes) -> BatchVerdict:
        """POST one batch body; never raises for HTTP or network faults."""
        try:
            response = self._client.post(self.url, content=body)
        except httpx.HTTPError as exc:
            return classify_exception(exc)
        return classify_response(response.status_code, response.headers, response.content)

    def close(self) -> None:
        """Close the pooled connections."""
        self._client.close()

    def __repr__(self) -> str:  # never show the key
        return f"TrackTransport(url={self.url!r})"
