"""Triggered limits as the server sends them, and a ``/track`` server that trips them.

The format helpers (:class:`SigningKey`, :func:`triggered_limits_object`) make
the SDK's ``triggered_limits`` object: an RS256 JWT, issuer ``aicm-api``,
claims ``{"triggered_limits": [event, ...]}``, with the PEM public key beside
it. Tests of the worker and producers use them, and so can a server's tests.

:class:`LimitsServer` runs in a thread of the test (uvicorn on 127.0.0.1): it
answers every record ``queued``, trips a limit once a service key has had
``trip_after`` records, and carries the current set in every ``/track``
answer and in ``GET /triggered-limits``. It can also answer with forged tokens
(the attacker's tests) and clear a limit (the operator's).
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import jwt
import uvicorn
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from aicm_tasks.devtools.processes import free_port, stop_process, wait_until
from aicm_tasks.limits import ALGORITHM, ISSUER, TriggeredLimit


class SigningKey:
    """An RSA key pair that signs triggered-limits tokens (2048 bits, as a server's)."""

    def __init__(self) -> None:
        self._private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.public_pem = (
            self._private.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode()
        )

    def sign(self, claims: dict[str, Any], *, algorithm: str = ALGORITHM) -> str:
        return jwt.encode(claims, self._private, algorithm=algorithm)


def limit(
    service_key: str | None = "openai::gpt-4o-mini",
    customer_key: str | None = None,
    *,
    limit_id: str | None = None,
    api_key_id: str | None = None,
    expires_at: str | None = None,
) -> TriggeredLimit:
    """A triggered limit as a server would trip it."""
    return TriggeredLimit(
        event_id=str(uuid.uuid4()),
        limit_id=limit_id or f"limit-{uuid.uuid4().hex[:8]}",
        threshold_type="limit",
        amount=10.0,
        period="day",
        limit_message="daily budget reached",
        service_key=service_key,
        customer_key=customer_key,
        api_key_id=api_key_id,
        triggered_at="2026-12-01T00:00:00Z",
        expires_at=expires_at,
    )


def token_claims(limits: list[TriggeredLimit], *, issuer: str = ISSUER) -> dict[str, Any]:
    return {
        "iss": issuer,
        "iat": time.time(),
        "triggered_limits": [item.to_dict() for item in limits],
    }


def triggered_limits_object(
    limits: list[TriggeredLimit], key: SigningKey, *, with_public_key: bool = True
) -> dict[str, str]:
    """The ``triggered_limits`` object of a ``/track`` answer, in the SDK's format."""
    data = {"encrypted_payload": key.sign(token_claims(limits))}
    if with_public_key:
        data["public_key"] = key.public_pem
    return data


def forged_object(limits: list[TriggeredLimit], genuine: SigningKey, how: str) -> dict[str, str]:
    """A ``triggered_limits`` object an attacker could send.

    ``how``: ``other-key`` (signed by another key, the genuine public key beside
    it), ``unsigned`` (``alg: none``), ``wrong-issuer``, ``hs256`` (HMAC with the
    public key as the secret: the classic algorithm-confusion forgery).
    """
    claims = token_claims(limits)
    if how == "other-key":
        token = SigningKey().sign(claims)
    elif how == "unsigned":
        token = jwt.encode(claims, "", algorithm="none")
    elif how == "wrong-issuer":
        token = genuine.sign(token_claims(limits, issuer="someone-else"))
    elif how == "hs256":
        token = _hs256(claims, genuine.public_pem)
    else:
        raise ValueError(how)
    return {"encrypted_payload": token, "public_key": genuine.public_pem}


def _hs256(claims: dict[str, Any], secret: str) -> str:
    # PyJWT refuses a PEM as an HMAC secret, so the token is made by hand.
    import base64
    import hashlib
    import hmac

    def b64(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps(claims).encode())
    mac = hmac.new(secret.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(mac)}"


@dataclass
class LimitsState:
    """What the server knows: the set, the rule that trips it, what it has seen."""

    #: Trip a limit on a service key once it has had this many records (None: never).
    trip_after: int | None = None
    trip_service_key: str = "openai::gpt-4o-mini"
    trip_customer_key: str | None = None
    limits: list[TriggeredLimit] = field(default_factory=list)
    #: None: genuine tokens; otherwise how answers forge them (see forged_object).
    forge: str | None = None
    with_public_key: bool = True
    counts: dict[str, int] = field(default_factory=dict)
    records: int = 0
    #: limit_id -> epoch seconds of the first /track answer that carried it.
    first_sent_at: dict[str, float] = field(default_factory=dict)
    #: Records received after a limit was first sent (the overshoot), by limit_id.
    after_trip: dict[str, int] = field(default_factory=dict)


class LimitsServer:
    """A ``/track`` server in a thread that trips limits; ``url`` is its API base."""

    def __init__(self, api_key: str = "limits-test-key") -> None:
        self.api_key = api_key
        self.key = SigningKey()
        self.state = LimitsState()
        self._lock = threading.Lock()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        app = Starlette(
            routes=[
                Route("/api/v1/track", self._track, methods=["POST"]),
                Route("/api/v1/triggered-limits", self._triggered, methods=["GET"]),
            ]
        )
        self._server = uvicorn.Server(
            uvicorn.Config(
                app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off"
            )
        )
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def __enter__(self) -> LimitsServer:
        self._thread.start()
        wait_until(lambda: self._server.started, 10, "the limits server")
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(10)

    # -- the operator's side ------------------------------------------------------
    def trigger(self, item: TriggeredLimit) -> None:
        with self._lock:
            self.state.limits.append(item)

    def clear(self) -> None:
        with self._lock:
            self.state.limits = []
            self.state.trip_after = None

    def _object(self) -> dict[str, str]:
        limits = list(self.state.limits)
        if self.state.forge is not None:
            return forged_object(limits, self.key, self.state.forge)
        return triggered_limits_object(limits, self.key, with_public_key=self.state.with_public_key)

    # -- endpoints -------------------------------------------------------------------
    def _authorised(self, request: Request) -> bool:
        return request.headers.get("authorization") == f"Bearer {self.api_key}"

    async def _track(self, request: Request) -> Response:
        if not self._authorised(request):
            return JSONResponse({"detail": "bad key"}, status_code=401)
        records = json.loads(await request.body())["tracked"]
        with self._lock:
            state = self.state
            for limit_id in state.first_sent_at:
                state.after_trip[limit_id] = state.after_trip.get(limit_id, 0) + len(records)
            for record in records:
                state.records += 1
                service_key = record.get("service_key")
                state.counts[service_key] = state.counts.get(service_key, 0) + 1
                if (
                    state.trip_after is not None
                    and service_key == state.trip_service_key
                    and state.counts[service_key] >= state.trip_after
                ):
                    state.limits.append(
                        limit(state.trip_service_key, state.trip_customer_key, limit_id="tripped")
                    )
                    state.trip_after = None
            data = self._object()
            now = time.time()
            for item in state.limits:
                state.first_sent_at.setdefault(str(item.limit_id), now)
        results = [{"response_id": r.get("response_id"), "status": "queued"} for r in records]
        return JSONResponse({"results": results, "triggered_limits": data})

    async def _triggered(self, request: Request) -> Response:
        if not self._authorised(request):
            return JSONResponse({"detail": "bad key"}, status_code=401)
        with self._lock:
            data = self._object()
        return JSONResponse({"triggered_limits": data})


def outcomes_after_a_trip(
    processes: list[subprocess.Popen[str]], server: LimitsServer, service_key: str
) -> list[dict[str, Any]]:
    """Wait until every producer process (``tests.support.limits_producer publish``)
    says ready, make ``server`` trip the limit 40 records of ``service_key`` on,
    and return each process's last JSON line (its outcome). The processes are
    stopped whatever happens."""
    try:
        assert all(
            p.stdout is not None and p.stdout.readline().strip() == "ready" for p in processes
        )
        server.state.trip_after = server.state.counts.get(service_key, 0) + 40
        outcomes = []
        for process in processes:
            out, _ = process.communicate(timeout=150)
            outcomes.append(json.loads(out.strip().splitlines()[-1]))
        return outcomes
    finally:
        for process in processes:
            stop_process(process)  # type: ignore[arg-type]
