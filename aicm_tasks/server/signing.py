"""The server's RSA key pair and the signed ``triggered_limits`` payload the SDK decodes.

The official SDK (``aicostmanager`` 0.3, ``config_manager.py``) reads a
``/track`` answer's ``triggered_limits`` as ``{"version", "public_key",
"key_id", "encrypted_payload"}`` and decodes ``encrypted_payload`` with
``jwt.decode(token, public_key, algorithms=["RS256"], issuer="aicm-api")``;
the claims hold ``{"triggered_limits": [event, ...]}``. :class:`LimitSigner`
makes exactly that, so the SDK's own cache and ``UsageLimitExceeded`` work
against the local server.

The private key is created at the server's first start and kept in a file of
mode 0600 (:data:`PRIVATE_KEY_FILE` in the keys directory); restarts reuse it,
so a payload a client cached stays verifiable. Without a keys directory
(tests, ``:memory:`` ledgers) the pair lives in memory only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jwt
import platformdirs
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from aicm_tasks.errors import ConfigurationError

logger = logging.getLogger(__name__)

#: The issuer the SDK checks (``issuer="aicm-api"`` in its ``jwt.decode``).
ISSUER = "aicm-api"
#: The payload format's version, as the SDK's ``TriggeredLimitPayload.version``.
PAYLOAD_VERSION = "v1"
#: File name of the private key (PEM, PKCS#8, unencrypted, mode 0600).
PRIVATE_KEY_FILE = "triggered-limits-signing-key.pem"
#: RSA modulus size in bits: 2048 signs a payload in ~1 ms; the token is cached per set.
RSA_KEY_BITS = 2048


class LimitSigner:
    """Signs sets of triggered limit events as the SDK expects them.

    Thread-safe; the signed payload of the last set is cached, so answering
    ``/track`` costs no RSA operation while the set stays the same.
    """

    def __init__(self, keys_dir: Path | None = None) -> None:
        """Load the key pair from ``keys_dir``, creating it there if absent.

        ``keys_dir=None`` keeps a fresh pair in memory only, made when first
        needed: generating one takes ~80 ms, which every test building a
        server would otherwise pay.
        """
        self._lock = threading.Lock()
        self._cached: tuple[str, dict[str, Any]] | None = None
        self._private_key: rsa.RSAPrivateKey | None = None
        self._public_pem = b""
        if keys_dir is not None:
            self._private_key = _load_or_create(keys_dir)
            self._public_pem = _public_pem(self._private_key)

    @property
    def public_key_pem(self) -> str:
        """The public key in PEM, as sent alongside every payload."""
        return self._keys()[1].decode("ascii")

    @property
    def key_id(self) -> str:
        """A short fingerprint of the public key: the payload's ``key_id``."""
        return hashlib.sha256(self._keys()[1]).hexdigest()[:16]

    def _keys(self) -> tuple[rsa.RSAPrivateKey, bytes]:
        with self._lock:
            if self._private_key is None:
                self._private_key = _load_or_create(None)
                self._public_pem = _public_pem(self._private_key)
            return self._private_key, self._public_pem

    def payload(self, events: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """The ``triggered_limits`` object for ``events`` (JSON-ready dicts).

        The same events (equal in every field) return the same, cached, payload.
        """
        identity = json.dumps(list(events), sort_keys=True)
        with self._lock:
            if self._cached is not None and self._cached[0] == identity:
                return self._cached[1]
        # Sub-second (RFC 7519 allows a non-integer NumericDate; PyJWT and the SDK
        # read it): workers keep the set with the latest iat, and whole seconds
        # made two sets of one second equal, so the earlier could replace the later.
        claims = {"iss": ISSUER, "iat": time.time(), "triggered_limits": list(events)}
        private_key, _ = self._keys()
        token = jwt.encode(claims, private_key, algorithm="RS256", headers={"kid": self.key_id})
        document = {
            "version": PAYLOAD_VERSION,
            "public_key": self.public_key_pem,
            "key_id": self.key_id,
            "encrypted_payload": token,
        }
        with self._lock:
            self._cached = (identity, document)
        return document

    def decode(self, token: str) -> dict[str, Any]:
        """The claims of a token this signer made (the SDK's own check; for tests)."""
        claims: dict[str, Any] = jwt.decode(
            token, self.public_key_pem, algorithms=["RS256"], issuer=ISSUER
        )
        return claims


def _public_pem(private_key: rsa.RSAPrivateKey) -> bytes:
    return private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def default_keys_dir(db: str) -> Path | None:
    """Where the key pair of the ledger at ``db`` is kept unless told otherwise.

    Beside an SQLite file (its directory); the user's data directory
    (``platformdirs``) for a PostgreSQL URL; None (memory only) for ``:memory:``.
    """
    if db.startswith(("postgresql://", "postgres://", "postgresql+psycopg://")):
        return Path(platformdirs.user_data_dir("aicm-tasks"))
    path = db.removeprefix("sqlite:///")
    if path == ":memory:" or path.startswith("file:"):
        return None
    return Path(path).expanduser().resolve().parent


def _check_private(path: Path) -> None:
    """Refuse a key file other users may read or write (as ssh refuses one).

    It signs the limits workers enforce, and it sits beside the SQLite file, in
    a directory others may write to (``/tmp``): readable, it lets them sign
    limits a worker pinned to this key trusts; writable, or planted there, the
    same. This server creates it 0600; only a copy or a plant is refused."""
    if os.name != "posix":
        return
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise ConfigurationError(
            f"{path} (the triggered-limits signing key) is open to other users "
            f"(mode {mode:o}); chmod 600 it, or delete it to make a new one"
        )


def _load_or_create(keys_dir: Path | None) -> rsa.RSAPrivateKey:
    if keys_dir is None:
        return rsa.generate_private_key(public_exponent=65537, key_size=RSA_KEY_BITS)
    path = keys_dir / PRIVATE_KEY_FILE
    if path.exists():
        _check_private(path)
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ValueError(f"{path} does not hold an RSA private key")
        return key
    keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = rsa.generate_private_key(public_exponent=65537, key_size=RSA_KEY_BITS)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    # Written whole to a private temporary file, then linked into place: os.link
    # fails if the key exists, so two servers starting at once never overwrite
    # (or half-read) each other's key; the loser reads the winner's. Mode 0600
    # from creation: never readable by other users, not even for a moment.
    temporary = keys_dir / f".{PRIVATE_KEY_FILE}.{secrets.token_hex(8)}.tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(pem)
            file.flush()
            os.fsync(file.fileno())
        try:
            os.link(temporary, path)
        except FileExistsError:
            return _load_or_create(keys_dir)
    finally:
        temporary.unlink(missing_ok=True)
    logger.info("created the triggered-limits signing key at %s", path)
    return key
