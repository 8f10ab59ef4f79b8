"""CI's RabbitMQ checks (``.ci/run``): is the node really answering AMQP, which
beam.smp is it, and which test virtual hosts are leftovers.

Standard library only: ``.ci/run`` calls it with the system ``python3`` before
``make install`` has made the venv.

Why a handshake and not ``rabbitmq-diagnostics check_port_connectivity``: a
wedged RabbitMQ 3.10 node (last seen with 26 sockets in CLOSE-WAIT) still
accepts TCP on 5672, because the kernel completes the connection from the
listen backlog, and ``rabbitmqctl`` still answers, slowly; what it no longer
does is answer the AMQP protocol header with ``Connection.Start``. A healthy
node answers in about 2 ms here, so a few seconds is a wide margin.

Usage::

    python3 .ci/rabbitmq_health.py handshake [--host H] [--port P] [--timeout-s S]
    python3 .ci/rabbitmq_health.py node-pid [--node rabbit@localhost]
    rabbitmqctl -q list_vhosts --no-table-headers name | python3 .ci/rabbitmq_health.py leftover-vhosts

``handshake`` exits 0 when healthy, 1 when nothing accepts the connection (the
node is down or booting), 2 when it accepts and does not answer (wedged: restart
it), with the reason on stderr. ``node-pid`` exits 1 when no node runs.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

#: What a client sends first: "AMQP", 0, then protocol 0-9-1.
PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"
#: A frame's header (type 1, channel 2, size 4) then the method's class and method ids (2 + 2).
_START_PREFIX_LEN = 11
#: Frame type 1 (method) on channel 0, then (after the size) class 10, method 10: Connection.Start.
_METHOD_FRAME = 1
_CONNECTION_START = (10, 10)
#: A healthy node answers in ~2 ms on loopback; a wedged one never does.
DEFAULT_TIMEOUT_S = 5.0

#: Prefix of every vhost tests/support/rabbitmq.py creates (kept equal by a unit test).
VHOST_PREFIX = "aicm-test-"

#: Where Debian's rabbitmq-server keeps its node's pid file (RABBITMQ_MNESIA_BASE).
MNESIA_BASE = Path("/var/lib/rabbitmq/mnesia")
#: The system node's HOME, on beam.smp's command line; a test's private node has its own.
SYSTEM_HOME = "/var/lib/rabbitmq"


class HandshakeError(Exception):
    """The broker did not answer the AMQP handshake; ``accepted``: it took the connection."""

    def __init__(self, message: str, *, accepted: bool) -> None:
        super().__init__(message)
        self.accepted = accepted


def amqp_handshake(host: str, port: int, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
    """Return when the broker at ``host:port`` answers the protocol header with
    ``Connection.Start`` within ``timeout_s`` (one deadline for connect and read);
    raise :class:`HandshakeError` saying why not.

    The connection is then dropped; RabbitMQ logs it as closed before the
    handshake completed, which is harmless.
    """
    deadline = time.monotonic() + timeout_s
    try:
        sock = socket.create_connection((host, port), timeout=timeout_s)
    except OSError as exc:
        raise HandshakeError(f"{host}:{port}: {exc}", accepted=False) from exc
    received = b""
    with sock:
        try:
            sock.sendall(PROTOCOL_HEADER)
            while len(received) < _START_PREFIX_LEN:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError
                sock.settimeout(left)
                chunk = sock.recv(_START_PREFIX_LEN - len(received))
                if not chunk:
                    raise HandshakeError(
                        f"{host}:{port} closed the connection after {received!r}", accepted=True
                    )
                received += chunk
        except TimeoutError as exc:
            raise HandshakeError(
                f"{host}:{port} accepted but sent no Connection.Start within {timeout_s:g}s",
                accepted=True,
            ) from exc
        except OSError as exc:
            raise HandshakeError(f"{host}:{port}: {exc}", accepted=True) from exc
    frame_type, channel = received[0], int.from_bytes(received[1:3], "big")
    method = (int.from_bytes(received[7:9], "big"), int.from_bytes(received[9:11], "big"))
    if (frame_type, channel, method) != (_METHOD_FRAME, 0, _CONNECTION_START):
        raise HandshakeError(
            f"{host}:{port} answered {received!r}, not Connection.Start", accepted=True
        )


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this machine (signal 0)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def leftover_vhosts(names: Iterable[str], alive: Callable[[int], bool] = pid_alive) -> list[str]:
    """The test vhosts among ``names`` that no running test session owns.

    A session's vhost is ``aicm-test-<label>-<pid>-<random>``: it is kept while
    ``<pid>`` runs (another session on this machine), so a CI run never deletes a
    live one. A name without a pid (older code, or a pid this machine does not
    run) is a leftover.
    """
    leftovers = []
    for name in names:
        if not name.startswith(VHOST_PREFIX):
            continue
        parts = name.split("-")
        owner = parts[-2] if len(parts) >= 2 else ""
        if owner.isdigit() and alive(int(owner)):
            continue
        leftovers.append(name)
    return leftovers


def _cmdline(pid: int, proc: Path) -> list[str]:
    try:
        raw = (proc / str(pid) / "cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def is_system_beam(cmdline: list[str]) -> bool:
    """Whether ``cmdline`` is the system RabbitMQ node's beam.smp (HOME
    /var/lib/rabbitmq), not a test's private node (HOME in a temporary directory)."""
    if not cmdline or not cmdline[0].endswith("beam.smp"):
        return False
    return any(
        cmdline[i] == "-home" and cmdline[i + 1] == SYSTEM_HOME for i in range(len(cmdline) - 1)
    )


def node_pid(node: str, mnesia_base: Path = MNESIA_BASE, proc: Path = Path("/proc")) -> int | None:
    """The OS pid of ``node``'s beam.smp: from its pid file when that names a live
    beam.smp, else the one beam.smp with the system node's HOME; None if none runs."""
    try:
        pid = int((mnesia_base / f"{node}.pid").read_text().strip())
    except (OSError, ValueError):
        pid = 0
    if pid and is_system_beam(_cmdline(pid, proc)):
        return pid
    for entry in proc.iterdir():
        if entry.name.isdigit() and is_system_beam(_cmdline(int(entry.name), proc)):
            return int(entry.name)
    return None


def main(argv: list[str] | None = None) -> int:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    handshake = commands.add_parser("handshake", help="exit 0 when Connection.Start comes back")
    handshake.add_argument("--host", default="127.0.0.1")
    handshake.add_argument("--port", type=int, default=5672)
    handshake.add_argument("--timeout-s", type=float, default=DEFAULT_TIMEOUT_S)
    pid = commands.add_parser("node-pid", help="print the node's beam.smp pid")
    pid.add_argument("--node", default="rabbit@localhost")
    commands.add_parser("leftover-vhosts", help="vhost names on stdin; print the leftovers")
    args = parser.parse_args(argv)

    if args.command == "handshake":
        try:
            amqp_handshake(args.host, args.port, args.timeout_s)
        except HandshakeError as exc:
            sys.stderr.write(f"RabbitMQ is not answering AMQP: {exc}\n")
            return 2 if exc.accepted else 1
        return 0
    if args.command == "node-pid":
        found = node_pid(args.node)
        if found is None:
            return 1
        sys.stdout.write(f"{found}\n")
        return 0
    for name in leftover_vhosts(sys.stdin.read().split()):
        sys.stdout.write(f"{name}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
