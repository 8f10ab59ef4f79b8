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

Queues, confirmed publishes and streams over py-amqp are in
:mod:`tests.support.rabbitmq_messages`; a private node for tests that stop or
kill the broker (never the shared one) in :mod:`tests.support.rabbitmq_node`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import amqp
import httpx

#: The broker the tests use (the vhost part of the URL is replaced by a private one).
TEST_RABBITMQ_URL = os.environ.get("AICM_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/")
#: The management API, when enabled (``http://user:pass@host:15672/api/``); else rabbitmqctl.
TEST_RABBITMQ_API = os.environ.get("AICM_TEST_RABBITMQ_API", "")

#: Prefix of every vhost the tests and the benchmark create, so a leftover is recognisable
#: (``.ci/run`` deletes the leftovers: ``.ci/rabbitmq_health.py``, which keeps its own copy).
VHOST_PREFIX = "aicm-test-"


def vhost_name(label: str, pid: int | None = None) -> str:
    """``aicm-test-<label>-<pid>-<random>``: the creating process's pid in the name lets
    ``.ci/run`` tell a killed session's leftover vhost from a live session's."""
    return f"{VHOST_PREFIX}{label}-{os.getpid() if pid is None else pid}-{uuid.uuid4().hex[:10]}"


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
    """Create :func:`vhost_name` ``(label)`` on the broker of ``base_url``; delete it at exit."""
    admin = admin or vhost_admin()
    name = vhost_name(label)
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
