"""A real RabbitMQ for tests and the benchmark: a private virtual host, quorum queues, confirms.

The shared RabbitMQ (``AICM_TEST_RABBITMQ_URL``, default
``amqp://guest:guest@127.0.0.1:5672/``) is never reconfigured: a test session
(or a benchmark run) creates a virtual host of its own, gives its user every
permission there, and deletes it at the end, which deletes every queue and
exchange in it. Nothing a test declares can meet another engineer's queues.

Virtual hosts cannot be made over AMQP 0-9-1, so :func:`vhost_admin` picks
one of two admin paths:

* the management HTTP API when ``AICM_TEST_RABBITMQ_API`` is set
  (``http://guest:guest@127.0.0.1:15672/api/``): works from any machine user;
* otherwise ``rabbitmqctl`` (the broker's CLI; it needs the node's Erlang
  cookie, so root or the ``rabbitmq`` user on the broker's host). The
  management plugin is not enabled on the shared broker here, so this is the
  path the tests take on this machine and in ``.ci/run``.

Helpers over py-amqp (the client kombu's ``amqp://`` transport uses): declare
a durable quorum queue with a billing queue's arguments, publish persistent
messages with publisher confirms, read a queue's depth by passive declare.

A test that must stop or kill the broker never touches the shared one: it
starts a private node (:class:`PrivateRabbit`: its own node name, ports, data
and Erlang cookie in a temporary directory), as tests start private
``redis-server`` processes.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import amqp
import httpx

#: The broker the tests use (the vhost part of the URL is replaced by a private one).
TEST_RABBITMQ_URL = os.environ.get("AICM_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/")
#: The management API, when enabled (``http://user:pass@host:15672/api/``); else rabbitmqctl.
TEST_RABBITMQ_API = os.environ.get("AICM_TEST_RABBITMQ_API", "")

#: Prefix of every vhost the tests and the benchmark create, so a leftover is recognisable.
VHOST_PREFIX = "aicm-test-"

#: The arguments a billing queue is declared with (docs/design/rabbitmq.md, "The record
#: queue"): quorum (Raft-replicated, always durable and persistent); over-limit
#: redeliveries and rejections dead-letter at-least-once, which RabbitMQ only
#: honours with ``reject-publish`` overflow (a full queue nacks the publisher
#: instead of dropping the head). The dead-letter exchange is added per queue.
BILLING_QUEUE_ARGUMENTS: dict[str, Any] = {
    "x-queue-type": "quorum",
    "x-overflow": "reject-publish",
    "x-dead-letter-strategy": "at-least-once",
}


class VhostAdmin(Protocol):
    """Creates and deletes virtual hosts and grants the test user all rights in them."""

    def create(self, vhost: str, user: str) -> None:
        """Create ``vhost`` and give ``user`` configure, write and read on everything in it."""

    def delete(self, vhost: str) -> None:
        """Delete ``vhost`` and everything in it (no error when it is gone)."""

    def exists(self, vhost: str) -> bool:
        """Whether ``vhost`` exists."""


class RabbitmqctlAdmin:
    """Virtual hosts through ``rabbitmqctl`` (about 0.8 s a call here: it boots an Erlang VM)."""

    def __init__(self, binary: str = "rabbitmqctl", timeout_s: float = 60.0) -> None:
        self.binary = binary
        self.timeout_s = timeout_s

    def _run(self, *args: str) -> str:
        result = subprocess.run(
            [self.binary, "-q", *args],
            capture_output=True,
            text=True,
            timeout=self.timeout_s,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"rabbitmqctl {' '.join(args)} exited {result.returncode}: "
                f"{(result.stderr or result.stdout).strip()}"
            )
        return result.stdout

    def create(self, vhost: str, user: str) -> None:
        """``add_vhost`` then ``set_permissions -p vhost user .* .* .*``."""
        self._run("add_vhost", vhost)
        self._run("set_permissions", "-p", vhost, user, ".*", ".*", ".*")

    def delete(self, vhost: str) -> None:
        """``delete_vhost`` unless it is already gone."""
        if self.exists(vhost):
            self._run("delete_vhost", vhost)

    def exists(self, vhost: str) -> bool:
        """``list_vhosts name``."""
        return vhost in self._run("list_vhosts", "name").split()


class ManagementApiAdmin:
    """Virtual hosts through the management plugin's HTTP API (``/api/vhosts``)."""

    def __init__(self, api_url: str, timeout_s: float = 30.0) -> None:
        parts = urlsplit(api_url if api_url.endswith("/") else api_url + "/")
        # The credentials go in the auth header, not in every URL (nor in error messages).
        netloc = parts.hostname or "127.0.0.1"
        if parts.port:
            netloc += f":{parts.port}"
        self.base = urlunsplit(parts._replace(netloc=netloc))
        auth = (unquote(parts.username or "guest"), unquote(parts.password or "guest"))
        self.client = httpx.Client(auth=auth, timeout=timeout_s)

    def _vhost_url(self, vhost: str) -> str:
        return f"{self.base}vhosts/{quote(vhost, safe='')}"

    def create(self, vhost: str, user: str) -> None:
        """``PUT /api/vhosts/{vhost}`` then ``PUT /api/permissions/{vhost}/{user}``."""
        self.client.put(self._vhost_url(vhost)).raise_for_status()
        permissions = {"configure": ".*", "write": ".*", "read": ".*"}
        url = f"{self.base}permissions/{quote(vhost, safe='')}/{quote(user, safe='')}"
        self.client.put(url, json=permissions).raise_for_status()

    def delete(self, vhost: str) -> None:
        """``DELETE /api/vhosts/{vhost}`` (404 means already gone)."""
        response = self.client.delete(self._vhost_url(vhost))
        if response.status_code != 404:
            response.raise_for_status()

    def exists(self, vhost: str) -> bool:
        """``GET /api/vhosts/{vhost}`` answers 200."""
        return self.client.get(self._vhost_url(vhost)).status_code == 200


def vhost_admin(api_url: str = TEST_RABBITMQ_API) -> VhostAdmin:
    """The management API when ``api_url`` is given, else ``rabbitmqctl``; RuntimeError if neither."""
    if api_url:
        return ManagementApiAdmin(api_url)
    binary = shutil.which("rabbitmqctl")
    if binary is None:
        raise RuntimeError(
            "cannot create a virtual host: set AICM_TEST_RABBITMQ_API to the management API "
            "(http://guest:guest@127.0.0.1:15672/api/) or install rabbitmqctl"
        )
    return RabbitmqctlAdmin(binary)


@dataclass(frozen=True)
class RabbitVhost:
    """A virtual host of the shared broker, private to one test session or benchmark run."""

    #: ``amqp://user:pass@host:port/<vhost>``: what ``AICM_BROKER_URL`` would be.
    url: str
    name: str

    @property
    def host(self) -> str:
        """``host:port`` as py-amqp takes it."""
        parts = urlsplit(self.url)
        return f"{parts.hostname or '127.0.0.1'}:{parts.port or 5672}"

    @property
    def user(self) -> str:
        """The user the URL logs in as."""
        return unquote(urlsplit(self.url).username or "guest")

    def connect(self, *, confirm_publish: bool = False, **options: Any) -> amqp.Connection:
        """A py-amqp connection into this vhost (``confirm_publish``: every channel confirms)."""
        return connect(self.url, confirm_publish=confirm_publish, **options)


def connect(url: str, *, confirm_publish: bool = False, **options: Any) -> amqp.Connection:
    """Open a py-amqp connection to an ``amqp://`` URL (vhost taken from its path)."""
    parts = urlsplit(url)
    vhost = unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
    connection = amqp.Connection(
        host=f"{parts.hostname or '127.0.0.1'}:{parts.port or 5672}",
        userid=unquote(parts.username or "guest"),
        password=unquote(parts.password or "guest"),
        virtual_host=vhost,
        confirm_publish=confirm_publish,
        connect_timeout=options.pop("connect_timeout", 5),
        **options,
    )
    connection.connect()
    return connection


def url_for_vhost(base_url: str, vhost: str) -> str:
    """``base_url`` with its path replaced by ``vhost`` (URL-quoted)."""
    return urlunsplit(urlsplit(base_url)._replace(path="/" + quote(vhost, safe="")))


def broker_answers(url: str = TEST_RABBITMQ_URL, timeout_s: float = 1.0) -> str | None:
    """None when an AMQP connection to ``url`` opens, else why not."""
    parts = urlsplit(url)
    try:
        with socket.create_connection(
            (parts.hostname or "127.0.0.1", parts.port or 5672), timeout=timeout_s
        ):
            pass
        connection = connect(url, connect_timeout=timeout_s)
    except Exception as exc:  # any failure means "not usable": the caller skips or fails
        return f"{type(exc).__name__}: {exc}"
    connection.close()
    return None


@contextlib.contextmanager
def private_vhost(
    base_url: str = TEST_RABBITMQ_URL, admin: VhostAdmin | None = None, label: str = "session"
) -> Iterator[RabbitVhost]:
    """Create ``aicm-test-<label>-<random>`` on the broker of ``base_url``; delete it at exit."""
    admin = admin or vhost_admin()
    name = f"{VHOST_PREFIX}{label}-{uuid.uuid4().hex[:10]}"
    vhost = RabbitVhost(url=url_for_vhost(base_url, name), name=name)
    admin.create(name, vhost.user)
    try:
        yield vhost
    finally:
        admin.delete(name)


@contextlib.contextmanager
def vhost_or_skip(
    base_url: str = TEST_RABBITMQ_URL, *, ci: bool, admin: VhostAdmin | None = None
) -> Iterator[RabbitVhost]:
    """:func:`private_vhost`, or a skip naming why not (a failure when ``ci``).

    No broker answering, or no way to make a vhost (rabbitmqctl needs the
    node's cookie; the management API may be off): a laptop skips, CI fails.
    """
    import pytest

    problem = broker_answers(base_url)
    if problem is not None:
        if ci:
            pytest.fail(f"CI needs a RabbitMQ at {redact(base_url)}: {problem}")
        pytest.skip(f"no RabbitMQ at {redact(base_url)}: {problem}")
    session = private_vhost(base_url, admin)
    try:
        vhost = session.__enter__()
    except Exception as exc:
        if ci:
            pytest.fail(f"CI needs a private vhost on {redact(base_url)}: {exc}")
        pytest.skip(f"cannot make a vhost on {redact(base_url)}: {exc}")
    try:
        yield vhost
    finally:
        session.__exit__(None, None, None)


def redact(url: str) -> str:
    """``url`` without its password (for skip and failure messages)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname or ''}"
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def declare_quorum_queue(
    channel: amqp.Channel, name: str, arguments: Mapping[str, Any] | None = None
) -> int:
    """Declare ``name`` durable, quorum, with :data:`BILLING_QUEUE_ARGUMENTS` (+ ``arguments``).

    Returns the ready-message count. Re-declaring with other arguments fails
    with ``PreconditionFailed`` (406), so every declarer must use the same ones.
    """
    ok = channel.queue_declare(
        name,
        durable=True,
        auto_delete=False,
        arguments={**BILLING_QUEUE_ARGUMENTS, **(arguments or {})},
    )
    return _declare_ok(ok)[0]


def publish_confirmed(
    channel: amqp.Channel,
    queue: str,
    body: bytes | str | Mapping[str, Any],
    *,
    confirm_timeout_s: float = 10.0,
    headers: Mapping[str, Any] | None = None,
) -> None:
    """Publish one persistent message to ``queue`` and wait for the broker's confirm.

    ``channel`` must come from a connection opened with ``confirm_publish=True``
    (py-amqp then waits for ``basic.ack`` after each publish; ``basic.nack``
    raises ``amqp.exceptions.MessageNacked``, no answer in time raises
    ``socket.timeout``). ``mandatory`` makes an unroutable message come back
    instead of vanishing (a missing queue is then an error, not a silent drop).
    """
    if isinstance(body, Mapping):
        body = json.dumps(body)
    message = amqp.basic_message.Message(
        body,
        delivery_mode=2,
        content_type="application/json",
        application_headers=dict(headers or {}),
    )
    channel.basic_publish(
        message, exchange="", routing_key=queue, mandatory=True, confirm_timeout=confirm_timeout_s
    )


def declare_stream(channel: amqp.Channel, name: str, max_age: str = "7D") -> None:
    """Declare ``name`` as a durable stream (an append-only log) kept ``max_age`` (``7D``, ``1h``)."""
    channel.queue_declare(
        name,
        durable=True,
        auto_delete=False,
        arguments={"x-queue-type": "stream", "x-max-age": max_age},
    )


def read_stream(
    connection: amqp.Connection, name: str, offset: int | str, count: int, timeout_s: float = 10.0
) -> list[amqp.Message]:
    """``count`` messages of stream ``name`` from ``offset`` (a number, ``first``, ``1h``...).

    A stream is read by a consumer with a prefetch and manual acks (RabbitMQ
    refuses ``basic.get``, auto-ack and a consumer without ``basic.qos``);
    reading removes nothing. Each message carries its offset in the
    ``x-stream-offset`` header.
    """
    channel = connection.channel()
    received: list[amqp.Message] = []
    try:
        channel.basic_qos(prefetch_size=0, prefetch_count=max(count, 1), a_global=False)
        channel.basic_consume(
            name, callback=received.append, no_ack=False, arguments={"x-stream-offset": offset}
        )
        while len(received) < count:
            connection.drain_events(timeout=timeout_s)
        if received:
            channel.basic_ack(delivery_tag(received[-1]), multiple=True)
    finally:
        channel.close()
    return received[:count]


class ConfirmedBatch:
    """Publish many messages on one channel in confirm mode and wait once for all confirms.

    py-amqp's ``confirm_publish`` waits after every message (one round trip
    each); here confirm mode is selected by hand, every message is published,
    and the broker's ``basic.ack``/``basic.nack`` (delivery tags 1, 2, ... per
    channel; ``multiple`` covers every tag up to its own) are counted from the
    channel's ``events`` while the connection drains. The channel's connection
    must not have ``confirm_publish`` set.
    """

    def __init__(self, channel: amqp.Channel) -> None:
        self.channel = channel
        self.next_tag = 1
        self.pending: set[int] = set()
        self.nacked: set[int] = set()
        channel.confirm_select()
        # py-amqp calls these on basic.ack/basic.nack (its stubs omit ``events``).
        events: Any = getattr(channel, "events")  # noqa: B009
        events["basic_ack"].add(self._on_ack)
        events["basic_nack"].add(self._on_nack)

    def _settle(self, tag: int, multiple: bool) -> set[int]:
        done = {t for t in self.pending if t <= tag} if multiple else {tag} & self.pending
        self.pending -= done
        return done

    def _on_ack(self, tag: int, multiple: bool) -> None:
        self._settle(tag, multiple)

    def _on_nack(self, tag: int, multiple: bool) -> None:
        self.nacked |= self._settle(tag, multiple)

    def publish(self, queue: str, body: bytes | str) -> int:
        """Publish one persistent message to ``queue``; returns its delivery tag."""
        message = amqp.basic_message.Message(body, delivery_mode=2, content_type="application/json")
        self.channel.basic_publish(message, exchange="", routing_key=queue, mandatory=True)
        tag = self.next_tag
        self.next_tag += 1
        self.pending.add(tag)
        return tag

    def wait(self, timeout_s: float) -> set[int]:
        """Wait until every published message is confirmed; returns the nacked tags.

        Raises ``TimeoutError`` (``socket.timeout`` is its alias) when confirms are
        still missing after ``timeout_s``.
        """
        deadline = time.monotonic() + timeout_s
        while self.pending:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{len(self.pending)} publishes unconfirmed")
            self.channel.connection.drain_events(timeout=left)
        nacked, self.nacked = self.nacked, set()
        return nacked


def queue_depth(channel: amqp.Channel, name: str) -> int:
    """Ready messages in ``name`` by passive declare (unacknowledged ones are not counted)."""
    return _declare_ok(channel.queue_declare(name, passive=True))[0]


def queue_counts(channel: amqp.Channel, name: str) -> tuple[int, int]:
    """``(ready messages, consumers)`` of ``name`` by passive declare."""
    return _declare_ok(channel.queue_declare(name, passive=True))


def _declare_ok(ok: tuple[str, int, int] | None) -> tuple[int, int]:
    """``(message_count, consumer_count)`` of a ``queue.declare-ok`` (None only with nowait)."""
    if ok is None:
        raise RuntimeError("queue_declare answered nothing (nowait)")
    _, messages, consumers = ok
    return int(messages), int(consumers)


def delivery_tag(message: amqp.Message) -> int:
    """The delivery tag of a consumed message (what ``basic_ack`` takes)."""
    tag = message.delivery_tag
    if tag is None:
        raise ValueError("the message was not delivered by a consumer (no delivery tag)")
    return int(tag)


def rabbitmq_server_script() -> str | None:
    """The ``rabbitmq-server`` start script, or None when RabbitMQ is not installed.

    Debian's ``/usr/sbin/rabbitmq-server`` is a wrapper that re-runs it as the
    ``rabbitmq`` user when called by root (whose data directory it could not
    write then); the script it wraps is taken when present.
    """
    inner = sorted(glob.glob("/usr/lib/rabbitmq/lib/rabbitmq_server-*/sbin/rabbitmq-server"))
    return inner[-1] if inner else shutil.which("rabbitmq-server")


@dataclass
class PrivateRabbit:
    """A RabbitMQ node of a test's own: started, killed and restarted at will.

    Everything it keeps is under ``directory`` (data, logs, its Erlang
    cookie: ``HOME`` points there), it listens on 127.0.0.1 only, on free
    ports, under a node name of its own; it registers with the machine's epmd
    as any node does. Restarted with the same directory it keeps its queues
    and confirmed messages. The node boots in about 5 s here.
    """

    directory: Path
    port: int
    dist_port: int
    node: str = field(default_factory=lambda: f"aicm-test-{uuid.uuid4().hex[:8]}@localhost")
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``amqp://guest:guest@127.0.0.1:<port>/`` (guest may log in over loopback)."""
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def _env(self) -> dict[str, str]:
        directory = self.directory
        (directory / "rabbitmq.conf").write_text(f"listeners.tcp.local = 127.0.0.1:{self.port}\n")
        (directory / "enabled_plugins").write_text("[].\n")
        # An env file of its own, so /etc/rabbitmq/rabbitmq-env.conf's NODENAME is not read.
        (directory / "rabbitmq-env.conf").touch()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        env.update(
            HOME=str(directory),
            RABBITMQ_NODENAME=self.node,
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_MNESIA_BASE=str(directory / "mnesia"),
            RABBITMQ_LOG_BASE=str(directory / "log"),
            RABBITMQ_CONFIG_FILE=str(directory / "rabbitmq.conf"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(directory / "enabled_plugins"),
            RABBITMQ_CONF_ENV_FILE=str(directory / "rabbitmq-env.conf"),
            RABBITMQ_PID_FILE=str(directory / "rabbitmq.pid"),
            ERL_EPMD_ADDRESS="127.0.0.1",
        )
        return env

    def start(self, timeout_s: float = 120.0) -> None:
        """Start the node and wait until an AMQP connection opens (RuntimeError if not)."""
        script = rabbitmq_server_script()
        if script is None:
            raise RuntimeError("rabbitmq-server is not installed")
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.directory / "server.log", "ab") as log:
            # A session of its own: stop() and kill() signal the node's whole
            # process group (the start script, beam.smp and its helpers).
            self.process = subprocess.Popen(
                [script],
                env=self._env(),
                cwd=self.directory,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout_s
        while broker_answers(self.url) is not None:
            if self.process.poll() is not None:
                raise RuntimeError(f"rabbitmq-server exited {self.process.returncode}; see "
                                   f"{self.directory / 'server.log'}")  # fmt: skip
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"no RabbitMQ on port {self.port} after {timeout_s:.0f}s")
            time.sleep(0.25)

    def _signal_group(self, sig: int, timeout_s: float) -> None:
        process = self.process
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
        # beam.smp may outlive the start script by a moment: wait for the port to close.
        deadline = time.monotonic() + timeout_s
        while broker_answers(self.url, timeout_s=0.5) is None and time.monotonic() < deadline:
            time.sleep(0.2)
        self.process = None

    def kill(self) -> None:
        """SIGKILL the node (a crash: nothing is flushed or closed cleanly)."""
        self._signal_group(signal.SIGKILL, 30)

    def stop(self) -> None:
        """SIGTERM the node (RabbitMQ shuts down cleanly on it), SIGKILL after 60 s."""
        self._signal_group(signal.SIGTERM, 60)
