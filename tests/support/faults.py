"""A fault-injecting reverse proxy in front of the local /track server.

Tests switch its mode while a worker delivers through it: pass through, answer
503 or 429 (with Retry-After), 401, hang past the client's timeout, drip a
200 answer a byte at a time (each byte within the client's read timeout, the
whole never), answer 200 with a garbage body, or 500 to any request holding a ``crash::`` record. It can also stand for a server that holds several API
keys (``accept_keys``), recording which key sent which records.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from aicm_tasks.devtools.processes import free_port, wait_until


@dataclass
class FaultState:
    mode: str = "pass"
    retry_after_s: str | None = None
    hang_s: float = 30.0
    slow_s: float = 1.0
    #: "drip": one byte every drip_s, for hang_s in all, whatever the mode becomes.
    drip_s: float = 0.5
    closing: bool = False
    counts: dict[str, int] = field(default_factory=dict)
    #: When set, only these Bearer keys are let through (others get 401), and
    #: requests go upstream with ``upstream_key`` instead.
    accept_keys: set[str] | None = None
    upstream_key: str = ""
    #: (Bearer key, response_ids) of every request let through under accept_keys.
    requests_by_key: list[tuple[str, list[str]]] = field(default_factory=list)


class FaultProxy:
    """Runs in a thread; ``url`` is its base URL (use as AICM_API_BASE)."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.state = FaultState()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        app = Starlette(
            routes=[Route("/{path:path}", self._handle, methods=["GET", "POST", "PUT"])]
        )
        self._server = uvicorn.Server(
            uvicorn.Config(
                app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off"
            )
        )
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._client: httpx.AsyncClient | None = None

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        wait_until(lambda: self._server.started, 10, "the fault proxy")
        return self

    def __exit__(self, *exc: object) -> None:
        self.state.closing = True
        self._server.should_exit = True
        self._thread.join(10)

    def set(self, mode: str, retry_after_s: str | None = None) -> None:
        self.state.mode = mode
        self.state.retry_after_s = retry_after_s

    async def _handle(self, request: Request) -> Response:
        mode = self.state.mode
        self.state.counts[mode] = self.state.counts.get(mode, 0) + 1
        if mode == "503":
            headers = {"Retry-After": self.state.retry_after_s} if self.state.retry_after_s else {}
            return Response("unavailable", status_code=503, headers=headers)
        if mode == "429":
            headers = {"Retry-After": self.state.retry_after_s} if self.state.retry_after_s else {}
            return Response("slow down", status_code=429, headers=headers)
        if mode == "401":
            return Response('{"detail": "bad key"}', status_code=401)
        if mode == "garbage":
            return Response("<html>definitely not json</html>", status_code=200)
        if mode == "flaky" and b"flaky::" in await request.body():
            return Response("unavailable", status_code=503)
        if mode == "crash" and b"crash::" in await request.body():
            # A server that fails on one record: 500 to every request holding it.
            return Response("Internal Server Error", status_code=500)
        if mode == "poison" and b'"poison":true' in await request.body():
            return Response('{"detail": "request refused"}', status_code=422)
        if mode == "slow":
            await asyncio.sleep(self.state.slow_s)
        if mode == "drip":
            return StreamingResponse(self._drip(), status_code=200)
        if mode == "hang":
            await asyncio.sleep(self.state.hang_s)
            return Response("too late", status_code=504)
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=60)
        body = await request.body()
        headers = {
            k: v
            for k, v in request.headers.items()
            if k.lower() in ("authorization", "content-type")
        }
        if self.state.accept_keys is not None:
            key = request.headers.get("authorization", "").removeprefix("Bearer ")
            if key not in self.state.accept_keys:
                return Response('{"detail": "unknown key"}', status_code=401)
            ids = [record["response_id"] for record in json.loads(body)["tracked"]]
            self.state.requests_by_key.append((key, ids))
            headers["authorization"] = f"Bearer {self.state.upstream_key}"
        upstream = await self._client.request(
            request.method, f"{self.upstream}{request.url.path}", content=body, headers=headers
        )
        return Response(
            upstream.content, status_code=upstream.status_code, media_type="application/json"
        )

    async def _drip(self) -> AsyncIterator[bytes]:
        started = time.monotonic()
        while time.monotonic() - started < self.state.hang_s and not self.state.closing:
            yield b" "
            await asyncio.sleep(self.state.drip_s)


def hold(seconds: float) -> None:
    """Let a fault last this long (the one place a test sleeps on purpose)."""
    time.sleep(seconds)
