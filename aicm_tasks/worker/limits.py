"""Triggered limits, from the server's answers to the broker: verified, then shared.

Every ``/track`` answer may carry ``triggered_limits`` (the SDK's format,
:mod:`aicm_tasks.limits`); the transport hands it to :meth:`LimitsKeeper.accept`,
and :func:`poll_limits` asks ``GET /triggered-limits`` now and then (the same
set, for a quiet pipeline). A token is used only once its RS256 signature and
issuer check out, with the key pinned by ``AICM_LIMITS_PUBLIC_KEY`` or else
the one the server sent beside it (or with its last answer, as the SDK does);
anything else is logged and ignored, never stored. What verifies is written to
the broker (:class:`~aicm_tasks.broker.limits.LimitStore`), where every
producer reads it.
"""

from __future__ import annotations

import functools
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import jwt
import redis
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

from aicm_tasks.broker.limits import WRITTEN, LimitStore
from aicm_tasks.limits import (
    ALGORITHM,
    ISSUER,
    PUBLIC_KEY_FIELD,
    TOKEN_FIELD,
    TriggeredLimit,
    limits_from_claims,
)

logger = logging.getLogger(__name__)

#: How often a worker writes an unchanged set again, at most, in seconds: one
#: EVALSHA that changes nothing (0.4 ms here, loaded) per second rather than per
#: answer (a busy worker settles hundreds of batches a second), and a set lost
#: from the broker is back within a second of the next answer.
REWRITE_EVERY_S = 1.0

#: How far the server's clock may be behind the worker's for a token with an
#: ``exp`` that just passed here to still count, in seconds. (``iat`` is not
#: checked against this host's clock at all: it only orders sets, and PyJWT
#: refused a token "not yet valid" when the server ran a second ahead, dropping
#: a tripped limit.) An expired token replayed later than this is refused, and
#: one replayed within it is older than the set stored, so ``iat`` refuses it.
EXPIRY_LEEWAY_S = 30.0


def verify_token(token: str, public_key: str | None) -> dict[str, Any] | None:
    """The claims of ``token`` when it is signed RS256 by ``public_key`` and issued
    by ``aicm-api`` (and not expired, if it says when); None otherwise."""
    if not public_key:
        return None
    try:
        key = _load_public_key(public_key)
        claims = jwt.decode(
            token,
            key,
            algorithms=[ALGORITHM],
            issuer=ISSUER,
            leeway=EXPIRY_LEEWAY_S,
            options={"verify_iat": False},
        )
    except Exception:
        # PyJWTError for a bad token; ValueError/TypeError from cryptography for a
        # key that is not an RSA public key. All mean: not to be trusted.
        return None
    return claims if isinstance(claims, dict) else None


@functools.lru_cache(maxsize=8)
def _load_public_key(pem: str) -> RSAPublicKey:
    """The RSA key of a PEM, parsed once per key rather than per token (a server
    that signs each answer anew makes one verification per batch: about 150 µs
    here, 0.3 µs a record of a 500-record batch). Anything but an RSA key raises."""
    key = serialization.load_pem_public_key(pem.encode())
    if not isinstance(key, RSAPublicKey):
        raise TypeError("not an RSA public key")
    return key


def _issued_at(iat: Any) -> float:
    """A token's ``iat`` as the epoch seconds that order sets; 0.0 when it is not a
    time. ``Infinity`` (which PyJWT's JSON reads) would have ordered every later set
    before it, freezing the stored limits for good."""
    if isinstance(iat, bool) or not isinstance(iat, int | float):
        return 0.0
    return float(iat) if math.isfinite(iat) else 0.0


def api_key_id(key: str) -> str | None:
    """The id the server puts in a limit's ``api_key_id`` for ``key``: what follows
    its last ``.``; None for a key without one (the SDK then keeps every limit)."""
    return key.rsplit(".", 1)[-1] if "." in key else None


class LimitsKeeper:
    """Verifies ``triggered_limits`` objects and writes the limits to the broker.

    ``key_ids`` maps a source (API-key alias, or ``DEFAULT_SOURCE``) to
    :func:`api_key_id` of its key: as the SDK, only limits of that key are kept.
    Thread-safe: every delivery thread reports its answers here.
    """

    def __init__(
        self,
        store: LimitStore,
        *,
        key_ids: Mapping[str, str | None] | None = None,
        pinned_public_key: str | None = None,
        rewrite_every_s: float = REWRITE_EVERY_S,
    ) -> None:
        self.store = store
        self.key_ids = dict(key_ids or {})
        self.pinned_public_key = pinned_public_key
        self.rewrite_every_s = rewrite_every_s
        self._lock = threading.Lock()
        self._public_keys: dict[str, str] = {}
        #: The last token of each source verified, with its limits, ``iat`` and
        #: when this keeper last wrote it (monotonic s): the same token again is
        #: not verified again (a busy worker sees it in every answer, the server
        #: caching it while the set is unchanged; verifying costs about 0.1 ms),
        #: and is written again once ``rewrite_every_s`` has passed. Never
        #: writing it again left a set evicted from the broker, or overwritten by
        #: another worker's answer of the same second, lost until the set changed.
        self._verified: dict[str, tuple[str, tuple[TriggeredLimit, ...], float, float]] = {}

    def accept(self, source: str, data: Mapping[str, Any]) -> bool:
        """Verify one ``triggered_limits`` object and store its limits; True when
        the broker's set changed. Never raises for a bad token or a broker fault."""
        token = data.get(TOKEN_FIELD)
        if not isinstance(token, str) or not token:
            return False
        sent_key = data.get(PUBLIC_KEY_FIELD)
        with self._lock:
            known = self._verified.get(source)
            key = self.pinned_public_key or (
                sent_key if isinstance(sent_key, str) and sent_key else None
            )
            key = key or self._public_keys.get(source)
        if known is not None and known[0] == token:
            if time.monotonic() - known[3] < self.rewrite_every_s:
                return False
            limits, issued_at = known[1], known[2]
        else:
            claims = verify_token(token, key)
            if claims is None:
                logger.warning(
                    "ignored triggered limits for %s: the token does not verify (RS256, issuer %s)",
                    source,
                    ISSUER,
                )
                return False
            try:
                limits = self._own(source, limits_from_claims(claims))
            except (ValueError, TypeError) as exc:  # TypeError: an amount that is a list
                logger.warning("ignored triggered limits for %s: %s", source, exc)
                return False
            issued_at = _issued_at(claims.get("iat"))
        try:
            written = self.store.write(source, limits, issued_at=issued_at)
        except redis.RedisError as exc:
            logger.warning("could not store the triggered limits for %s: %s", source, exc)
            return False
        with self._lock:
            self._verified[source] = (token, limits, issued_at, time.monotonic())
            if isinstance(sent_key, str) and sent_key:
                self._public_keys[source] = sent_key
        if written == WRITTEN:
            logger.info(
                "triggered limits for %s: %d (%s)",
                source,
                len(limits),
                ", ".join(str(limit.limit_id) for limit in limits) or "none",
            )
        return written == WRITTEN

    def _own(self, source: str, limits: tuple[TriggeredLimit, ...]) -> tuple[TriggeredLimit, ...]:
        key_id = self.key_ids.get(source)
        if key_id is None:
            return limits
        return tuple(limit for limit in limits if limit.api_key_id == key_id)


def poll_limits(
    keeper: LimitsKeeper,
    fetch: Callable[[str], Mapping[str, Any] | None],
    sources: list[str],
    stop: threading.Event,
    *,
    interval_s: float,
) -> None:
    """Ask ``fetch(source)`` (``GET /triggered-limits``) for every source at once,
    then every ``interval_s``, until ``stop`` is set; a thread of the worker."""
    pause_s = 0.0
    while not stop.wait(pause_s):
        pause_s = interval_s
        for source in sources:
            try:
                data = fetch(source)
                if data is not None:
                    keeper.accept(source, data)
            except Exception:
                logger.exception("could not refresh the triggered limits for %s", source)
