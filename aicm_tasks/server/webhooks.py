"""Webhook endpoints (the SDK's ``WebhookEndpoint*`` models) and the limit-event notifier.

When a limit trips, :class:`WebhookNotifier` POSTs the event to every active
endpoint from a thread of its own, never from the request that tripped it:
a ``/track`` answer never waits for a webhook. A failed POST (a network error,
a timeout, 429 or 5xx) is retried with exponential backoff
(:data:`DEFAULT_BACKOFF_S` doubling up to :data:`MAX_BACKOFF_S`) at most
:data:`DEFAULT_MAX_ATTEMPTS` times in all; any other 4xx gives up at once
(the endpoint refused it; sending it again would not help). Deliveries still
pending when the server stops are dropped with a warning: a notification, not
a billing record.

Each POST is signed so the receiver can check it came from this server:
``AICM-Signature: t=<epoch s>,v1=<hex HMAC-SHA256 of "<t>.<body>" keyed with
the endpoint's secret>``; the endpoint's ``tolerance`` (seconds) is how old a
``t`` the receiver should accept. The secret is never logged; log lines name
the endpoint by its uuid, not its URL (which may carry a token).
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import itertools
import json
import logging
import threading
import time
import uuid
from datetime import datetime, timezone
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, Field

from aicm_tasks.server.limit_store import LimitStore, Row

logger = logging.getLogger(__name__)

#: Attempts per delivery in all, the first included.
DEFAULT_MAX_ATTEMPTS = 6
#: Wait before the first retry, doubled for each next one.
DEFAULT_BACKOFF_S = 0.5
#: Longest wait between two attempts.
MAX_BACKOFF_S = 60.0
#: Time allowed for one POST (connect, send, answer).
DEFAULT_HTTP_TIMEOUT_S = 10.0
#: ``team_uuid`` of every endpoint: the local server has one team.
LOCAL_TEAM_UUID = "00000000-0000-0000-0000-000000000000"
#: The header carrying the signature.
SIGNATURE_HEADER = "AICM-Signature"
#: The event type of a tripped limit.
EVENT_TYPE = "usage_limit.triggered"
#: Largest ``tolerance`` accepted, in seconds (68 years): a larger one overflowed
#: the stores' integer columns, a 500 instead of a 400.
MAX_TOLERANCE_S = 2**31 - 1


class WebhookInput(BaseModel):
    """An endpoint as the SDK's client creates one (``WebhookEndpointCreate``)."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(pattern=r"^https?://", max_length=2048)
    secret: str = Field(min_length=1, max_length=512)
    active: bool = True
    tolerance: int = Field(default=300, ge=0, le=MAX_TOLERANCE_S)


class WebhookUpdate(BaseModel):
    """Changes to an endpoint (``WebhookEndpointUpdate``): the fields given replace."""

    model_config = ConfigDict(extra="forbid")

    url: str | None = Field(default=None, pattern=r"^https?://", max_length=2048)
    secret: str | None = Field(default=None, min_length=1, max_length=512)
    active: bool | None = None
    tolerance: int | None = Field(default=None, ge=0, le=MAX_TOLERANCE_S)


def webhook_document(row: Row) -> dict[str, Any]:
    """An endpoint row as the SDK's ``WebhookEndpointOut``."""
    return {
        "uuid": row[0],
        "url": row[1],
        "secret": row[2],
        "active": bool(row[3]),
        "tolerance": row[4],
        "team_uuid": LOCAL_TEAM_UUID,
        "created_at": datetime.fromtimestamp(row[5], tz=timezone.utc).isoformat(),
        "updated_at": datetime.fromtimestamp(row[6], tz=timezone.utc).isoformat(),
    }


def signature(secret: str, timestamp_s: int, body: bytes) -> str:
    """The :data:`SIGNATURE_HEADER` value of ``body`` sent at ``timestamp_s``."""
    digest = hmac.new(
        secret.encode("utf-8"), f"{timestamp_s}.".encode() + body, hashlib.sha256
    ).hexdigest()
    return f"t={timestamp_s},v1={digest}"


def gives_up(status_code: int) -> bool:
    """True if an answer with ``status_code`` ends a delivery (delivered or refused)."""
    return status_code < 400 or (status_code < 500 and status_code not in (408, 429))


class WebhookNotifier:
    """POSTs limit events to the active endpoints, retrying, on a background thread."""

    def __init__(
        self,
        limits: LimitStore,
        *,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        backoff_s: float = DEFAULT_BACKOFF_S,
        http_timeout_s: float = DEFAULT_HTTP_TIMEOUT_S,
    ) -> None:
        if max_attempts < 1 or backoff_s < 0:
            raise ValueError("max_attempts must be at least 1 and backoff_s not negative")
        self._limits = limits
        self._max_attempts = max_attempts
        self._backoff_s = backoff_s
        self._http_timeout_s = http_timeout_s
        # (due monotonic s, tie-breaker, endpoint uuid, body, attempt number)
        self._due: list[tuple[float, int, str, bytes, int]] = []
        self._order = itertools.count()
        self._wake = threading.Condition()
        self._stopping = False
        #: Deliveries being attempted now (popped from ``_due``, not yet done or re-queued).
        self._in_flight = 0
        self._thread: threading.Thread | None = None

    def notify(self, data: dict[str, Any]) -> None:
        """Queue ``data`` (a trip event) for every endpoint active now; returns at once."""
        body = json.dumps(
            {
                # The trip's id: a receiver can drop a repeat (a retry whose
                # first answer was lost) by it.
                "id": str(data.get("event_id") or uuid.uuid4()),
                "type": EVENT_TYPE,
                "created_at": datetime.now(timezone.utc).isoformat(),
                "data": data,
            },
            separators=(",", ":"),
        ).encode("utf-8")
        endpoints = self._limits.webhooks(active_only=True)
        with self._wake:
            for row in endpoints:
                heapq.heappush(self._due, (time.monotonic(), next(self._order), row[0], body, 1))
            self._wake.notify()
        self._ensure_started()

    def pending(self) -> int:
        """Deliveries not yet done, the one being attempted included (for tests and logs)."""
        with self._wake:
            return len(self._due) + self._in_flight

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the thread; pending deliveries are dropped with a warning."""
        with self._wake:
            self._stopping = True
            dropped = len(self._due)
            self._due.clear()
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(timeout_s)
        if dropped:
            logger.warning("server stopping: %d webhook deliveries dropped", dropped)

    def _ensure_started(self) -> None:
        with self._wake:
            if self._thread is None and not self._stopping:
                self._thread = threading.Thread(target=self._run, name="aicm-webhooks", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        with httpx.Client(timeout=self._http_timeout_s) as client:
            while True:
                with self._wake:
                    while not self._stopping and (
                        not self._due or self._due[0][0] > time.monotonic()
                    ):
                        wait_s = self._due[0][0] - time.monotonic() if self._due else None
                        self._wake.wait(wait_s)
                    if self._stopping:
                        return
                    _, _, endpoint_id, body, attempt = heapq.heappop(self._due)
                    self._in_flight = 1
                try:
                    self._attempt(client, endpoint_id, body, attempt)
                except Exception:  # a database error must not end the thread
                    logger.exception("webhook %s: delivery failed", endpoint_id)
                finally:
                    with self._wake:
                        self._in_flight = 0

    def _attempt(self, client: httpx.Client, endpoint_id: str, body: bytes, attempt: int) -> None:
        row = self._limits.webhook(endpoint_id)
        if row is None or not row[3]:
            return  # deleted or deactivated since: nothing to send
        problem: str
        try:
            response = client.post(
                row[1],
                content=body,
                headers={
                    "Content-Type": "application/json",
                    SIGNATURE_HEADER: signature(row[2], int(time.time()), body),
                },
            )
        except httpx.HTTPError as exc:
            problem = type(exc).__name__
        else:
            if gives_up(response.status_code):
                if response.status_code >= 400:
                    logger.error(
                        "webhook %s refused a limit event with HTTP %d; not retried",
                        endpoint_id,
                        response.status_code,
                    )
                else:
                    logger.info("webhook %s: limit event delivered", endpoint_id)
                return
            problem = f"HTTP {response.status_code}"
        if attempt >= self._max_attempts:
            logger.error(
                "webhook %s: limit event not delivered after %d attempts (%s); given up",
                endpoint_id,
                attempt,
                problem,
            )
            return
        delay_s = min(self._backoff_s * 2 ** (attempt - 1), MAX_BACKOFF_S)
        logger.warning(
            "webhook %s: attempt %d failed (%s); retrying in %.1f s",
            endpoint_id,
            attempt,
            problem,
            delay_s,
        )
        with self._wake:
            if not self._stopping:
                heapq.heappush(
                    self._due,
                    (time.monotonic() + delay_s, next(self._order), endpoint_id, body, attempt + 1),
                )
