"""Opening a py-amqp connection from an ``amqp://`` URL, and what its failures look like.

py-amqp (the client under kombu's ``amqp://`` transport) is used directly on
the record path, as redis-py is on Redis: kombu's producer adds its envelope
and a confirm per message (``docs/design/rabbitmq.md``, "What confirms cost").
A py-amqp connection is not thread-safe: one per thread, or one behind a lock.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import amqp

from aicm_tasks.redact import redact_url

logger = logging.getLogger(__name__)

#: Bytes a reading connection asks of its socket per ``recv`` at least. py-amqp
#: asks for exactly the bytes of the frame part it parses next (a 7-byte
#: header, the payload, the end octet), so a delivery (three frames) costs about
#: ten ``recv`` calls, each a ``poll`` and a release of the interpreter lock.
#: Asking for 8 KiB lets one call bring a dozen ~600-byte deliveries; py-amqp
#: keeps the surplus in its own buffer (``_read_buffer``) and slices frames from
#: it. Measured on a bare consumer of a quorum queue: 25.9k -> 36.6k msgs/s,
#: 35 -> 23 CPU µs a message (docs/design/rabbitmq.md, "One reading thread").
#: Larger is not better: py-amqp copies the rest of the buffer at every slice.
READ_AHEAD_BYTES = 8192

#: What a broker that did not take a write raises: a refused or lost connection
#: (OSError, socket.timeout), a protocol or channel error (406, 404, 540...), a
#: nack (py-amqp's ``MessageNacked`` derives from Exception only, hence listed),
#: and a confirm that did not arrive in time (``TimeoutError``, an OSError).
RABBIT_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    amqp.exceptions.AMQPError,
    amqp.exceptions.MessageNacked,
)

#: Closing a connection whose socket is gone: py-amqp may also raise AttributeError.
_CLOSE_ERRORS: tuple[type[BaseException], ...] = (*RABBIT_ERRORS, AttributeError)


@dataclass(frozen=True, slots=True)
class AmqpTarget:
    """Where an ``amqp://`` URL points, split the way py-amqp takes it."""

    host: str
    userid: str
    password: str
    virtual_host: str
    tls: bool

    @classmethod
    def from_url(cls, url: str) -> AmqpTarget:
        """``amqp://user:pass@host:port/vhost``; the vhost is percent-decoded (``/%2F`` is
        ``/``, as in kombu), an empty path means ``/``; ``amqps://`` means TLS, port 5671."""
        parts = urlsplit(url)
        tls = parts.scheme == "amqps"
        port = parts.port or (5671 if tls else 5672)
        path = parts.path[1:] if parts.path.startswith("/") else parts.path
        return cls(
            host=f"{parts.hostname or 'localhost'}:{port}",
            userid=unquote(parts.username or "guest"),
            password=unquote(parts.password or "guest"),
            virtual_host=unquote(path) or "/",
            tls=tls,
        )


def open_connection(
    url: str,
    *,
    timeout_s: float,
    confirm_publish: bool = False,
    heartbeat_s: int = 0,
) -> amqp.Connection:
    """A connected py-amqp connection to ``url``; every socket wait is bounded by ``timeout_s``.

    ``confirm_publish`` makes each ``basic_publish`` wait for its confirm (one
    round trip per message); for lists use :class:`.confirms.ConfirmedPublishes`
    on a connection without it. Raises one of :data:`RABBIT_ERRORS`; the message
    names the broker with its password redacted.
    """
    target = AmqpTarget.from_url(url)
    connection = amqp.Connection(
        host=target.host,
        userid=target.userid,
        password=target.password,
        virtual_host=target.virtual_host,
        ssl=target.tls,  # py-amqp wraps the socket with the system's default context
        connect_timeout=timeout_s,
        read_timeout=timeout_s,
        write_timeout=timeout_s,
        confirm_publish=confirm_publish,
        heartbeat=heartbeat_s,
    )
    try:
        connection.connect()
    except TimeoutError as exc:
        raise TimeoutError(f"RabbitMQ at {redact_url(url)} did not answer in {timeout_s}s") from exc
    except OSError as exc:
        raise ConnectionError(
            f"RabbitMQ at {redact_url(url)} refused the connection: {exc}"
        ) from exc
    return connection


def close_quietly(connection: amqp.Connection | None) -> None:
    """Close ``connection``, ignoring a broken socket (it is being dropped anyway)."""
    if connection is None:
        return
    try:
        connection.close()
    except _CLOSE_ERRORS:
        # AttributeError: py-amqp's close on a connection whose transport is gone.
        with contextlib.suppress(Exception):  # nothing more to release
            connection.collect()


def read_ahead(connection: amqp.Connection, size: int = READ_AHEAD_BYTES) -> bool:
    """Make ``connection`` ask its socket for at least ``size`` bytes per read.

    This replaces py-amqp's private ``transport._quick_recv`` (the socket's
    ``recv``, or ``read`` under TLS, which both return what is there up to the
    size asked), the one hook it has for how much to read: its ``_read`` loops
    until it holds the bytes it needs and keeps the rest for the next frame.
    py-amqp has no public option for it (5.x). When the attribute is missing
    (another py-amqp) nothing changes and this returns False: reads stay
    correct, only slower.
    """
    transport = getattr(connection, "transport", None)
    recv = getattr(transport, "_quick_recv", None)
    if recv is None or not hasattr(transport, "_read_buffer"):
        logger.info("this py-amqp has no transport._quick_recv: reading frame part by part")
        return False

    def recv_ahead(wanted: int) -> bytes:
        data: bytes = recv(max(wanted, size))
        return data

    transport._quick_recv = recv_ahead  # type: ignore[union-attr]
    return True
