"""The httpx client for ``POST /track``, and nothing else.

One pooled, keep-alive client per worker process, shared by its delivery
threads (httpx.Client is thread-safe). The API keys live only in this object,
sent as each request's Authorization header: never logged, never written to
Redis. Records name an alias (``AICM_API_KEYS``), never a key.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import httpx

from aicm_tasks.broker.limits import DEFAULT_SOURCE
from aicm_tasks.redact import redact_url
from aicm_tasks.worker.outcomes import (
    BODY_EXCERPT_CHARS,
    BatchVerdict,
    Post,
    VerdictKind,
    classify_response,
)

logger = logging.getLogger(__name__)

#: Largest answer read from /track: one for a batch of the contract's largest
#: size, every record with errors, is a few hundred kB; past this the answer is
#: abandoned as transient rather than held in the worker's memory.
MAX_ANSWER_BYTES = 16 * 1024 * 1024


def classify_exception(exc: BaseException) -> BatchVerdict:
    """A request that got no HTTP answer: always transient."""
    if isinstance(exc, httpx.TimeoutException):
        detail = f"timeout: {type(exc).__name__}"
    elif isinstance(exc, httpx.HTTPError):
        detail = f"network: {type(exc).__name__}: {exc}"
    else:
        detail = f"{type(exc).__name__}: {exc}"
    return BatchVerdict(VerdictKind.TRANSIENT, detail[:BODY_EXCERPT_CHARS])


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


#: Told of each answer's ``triggered_limits`` object: ``(source, object)``, the
#: source being the API-key alias that asked (``DEFAULT_SOURCE`` for the default key).
LimitsSink = Callable[[str, Mapping[str, Any]], object]


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
        on_limits: LimitsSink | None = None,
    ) -> None:
        self.url = url
        #: ``GET /triggered-limits``, beside ``/track``.
        self.limits_url = url.rsplit("/", 1)[0] + "/triggered-limits"
        #: As log lines name it: an AICM_API_BASE may carry a password.
        self._shown_limits_url = redact_url(self.limits_url)
        self.on_limits = on_limits
        self._timeout_s = timeout_s
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
        return functools.partial(self._post, headers=self._auth[alias], source=alias)

    def post(self, body: bytes) -> BatchVerdict:
        """POST one batch body with the default key; never raises for HTTP or network faults."""
        return self._post(body, headers=self._default or {}, source=DEFAULT_SOURCE)

    @property
    def sources(self) -> list[str]:
        """The limit sources this transport holds a key for: the aliases, and
        ``DEFAULT_SOURCE`` when there is a default key."""
        return ([DEFAULT_SOURCE] if self._default is not None else []) + self.aliases

    def get_triggered_limits(self, source: str) -> Mapping[str, Any] | None:
        """``GET /triggered-limits`` with the key of ``source``: its ``triggered_limits``
        object (unverified), None when the server has none or cannot answer.

        A short timeout: this is a refresh, the ``/track`` answers carry the same."""
        headers = self._default if source == DEFAULT_SOURCE else self._auth.get(source)
        try:
            response = self._client.get(
                self.limits_url, headers=headers or {}, timeout=min(self._timeout_s, 10.0)
            )
        except httpx.HTTPError as exc:
            logger.warning("GET %s failed: %s", self._shown_limits_url, type(exc).__name__)
            return None
        if response.status_code != 200:
            logger.debug("GET %s answered %d", self._shown_limits_url, response.status_code)
            return None
        try:
            document = response.json()
        except ValueError:
            return None
        if not isinstance(document, dict):
            return None
        # The SDK accepts both {"triggered_limits": {...}} and the object itself.
        data = document.get("triggered_limits", document)
        return data if isinstance(data, dict) and data else None

    def _post(self, body: bytes, headers: dict[str, str], source: str) -> BatchVerdict:
        # httpx's timeout bounds each socket read, not the answer: a server (or a
        # proxy) that drips its body a byte at a time, each within the timeout,
        # held a delivery thread and its batch for good (the worker is alive, so
        # nobody reclaims it). The body is read in chunks against a deadline of
        # timeout_s for the whole POST, and past MAX_ANSWER_BYTES, instead.
        deadline = time.monotonic() + self._timeout_s
        try:
            with self._client.stream("POST", self.url, content=body, headers=headers) as response:
                chunks: list[bytes] = []
                size = 0
                for chunk in response.iter_bytes():
                    chunks.append(chunk)
                    size += len(chunk)
                    if size > MAX_ANSWER_BYTES:
                        return self._cut(
                            response.status_code, f"more than {MAX_ANSWER_BYTES} bytes"
                        )
                    if time.monotonic() > deadline:
                        return self._cut(
                            response.status_code, f"not complete in {self._timeout_s:g}s"
                        )
        except httpx.HTTPError as exc:
            return classify_exception(exc)
        verdict = classify_response(response.status_code, response.headers, b"".join(chunks))
        if verdict.triggered_limits is not None and self.on_limits is not None:
            try:
                self.on_limits(source, verdict.triggered_limits)
            except Exception:
                # The batch was delivered: a fault in reading limits must not undo that.
                logger.exception("could not take the triggered limits of a /track answer")
        return verdict

    @staticmethod
    def _cut(status: int, why: str) -> BatchVerdict:
        """An answer abandoned while it was being read: transient, whatever its status."""
        return BatchVerdict(VerdictKind.TRANSIENT, f"timeout: HTTP {status} answer {why}", status)

    def close(self) -> None:
        """Close the pooled connections."""
        self._client.close()

    def __repr__(self) -> str:  # never show the key
        return f"TrackTransport(url={redact_url(self.url)!r})"
