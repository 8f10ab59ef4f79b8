"""``.ci/rabbitmq_health.py``: the AMQP handshake check against fake brokers on
loopback (one that accepts and never answers, as the wedged 3.10 node did), the
leftover-vhost rule, and finding the system node's beam.smp.

The real broker, and a real node frozen with SIGSTOP, are in
``tests/integration/test_ci_rabbitmq_health.py``.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.ci_health import SCRIPT, load_ci_health
from tests.support.rabbitmq import VHOST_PREFIX, vhost_name

health = load_ci_health()

#: What a RabbitMQ 3.10 sends first: a method frame on channel 0, Connection.Start (10, 10).
CONNECTION_START = bytes.fromhex("01 0000 000001f0 000a 000a 0009")


class FakeBroker:
    """A TCP listener on 127.0.0.1 that answers each connection with ``reply(header)``
    (None: read the header and never answer, keeping the socket open)."""

    def __init__(self, reply: Callable[[bytes], bytes | None]) -> None:
        self.reply = reply
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.headers: list[bytes] = []
        self.held: list[socket.socket] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            header = conn.recv(8)
            self.headers.append(header)
            answer = self.reply(header)
            if answer is None:
                self.held.append(conn)  # accepted, never answered: the wedge
                continue
            conn.sendall(answer)
            conn.close()

    def close(self) -> None:
        self.listener.close()
        for conn in self.held:
            conn.close()


@pytest.fixture
def fake_broker() -> Iterator[Callable[[Callable[[bytes], bytes | None]], FakeBroker]]:
    made: list[FakeBroker] = []

    def make(reply: Callable[[bytes], bytes | None]) -> FakeBroker:
        made.append(FakeBroker(reply))
        return made[-1]

    yield make
    for broker in made:
        broker.close()


def test_a_broker_that_accepts_and_never_answers_is_reported_wedged(fake_broker) -> None:
    broker = fake_broker(lambda header: None)
    with pytest.raises(health.HandshakeError, match="no Connection.Start within 0.5s") as caught:
        health.amqp_handshake("127.0.0.1", broker.port, timeout_s=0.5)
    assert caught.value.accepted
    assert broker.headers == [b"AMQP\x00\x00\x09\x01"]


def test_a_listener_that_never_accepts_is_reported_wedged() -> None:
    # The kernel completes the TCP handshake from the backlog with nobody calling
    # accept(): what 5672 looked like while the node was wedged.
    with socket.create_server(("127.0.0.1", 0), backlog=8) as listener:
        port = listener.getsockname()[1]
        with pytest.raises(health.HandshakeError) as caught:
            health.amqp_handshake("127.0.0.1", port, timeout_s=0.5)
    assert caught.value.accepted


def test_connection_start_is_a_healthy_answer(fake_broker) -> None:
    broker = fake_broker(lambda header: CONNECTION_START + b"\x00" * 16)
    health.amqp_handshake("127.0.0.1", broker.port, timeout_s=5)
    assert broker.headers == [health.PROTOCOL_HEADER]


@pytest.mark.parametrize(
    ("answer", "match"),
    [
        (b"HTTP/1.1 400 Bad Request\r\n\r\n", "not Connection.Start"),
        (b"AMQP\x00\x00\x09\x01", "closed the connection"),  # the server's protocol refusal
        (b"", "closed the connection"),
    ],
)
def test_any_other_answer_is_reported_with_what_came(fake_broker, answer: bytes, match) -> None:
    broker = fake_broker(lambda header: answer)
    with pytest.raises(health.HandshakeError, match=match) as caught:
        health.amqp_handshake("127.0.0.1", broker.port, timeout_s=5)
    assert caught.value.accepted


def test_nothing_listening_is_down_not_wedged() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
    with pytest.raises(health.HandshakeError) as caught:
        health.amqp_handshake("127.0.0.1", port, timeout_s=5)
    assert not caught.value.accepted


def test_the_command_exits_0_healthy_1_down_2_wedged_under_the_system_python(
    fake_broker,
) -> None:
    # -I: no venv, no PYTHONPATH, as .ci/run calls it before `make install`.
    python = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable
    healthy = fake_broker(lambda header: CONNECTION_START)
    wedged = fake_broker(lambda header: None)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        down = listener.getsockname()[1]

    def run(port: int) -> subprocess.CompletedProcess[str]:
        command = [python, "-I", str(SCRIPT), "handshake", "--port", str(port), "--timeout-s", "1"]
        return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)

    result = run(healthy.port)
    assert (result.returncode, result.stderr) == (0, "")
    assert run(down).returncode == 1
    result = run(wedged.port)
    assert result.returncode == 2
    assert "accepted but sent no Connection.Start" in result.stderr


def test_leftover_vhosts_are_the_test_vhosts_no_running_session_owns() -> None:
    names = [
        "/",
        "production",
        "aicm-test-session-111-0123456789",  # its session runs
        "aicm-test-session-222-0123456789",  # killed
        "aicm-test-bench-drain-111-abcdef0123",  # the benchmark's, running
        "aicm-test-session-2f9071bee6",  # older code's name: no pid
    ]
    assert health.leftover_vhosts(names, alive=lambda pid: pid == 111) == [
        "aicm-test-session-222-0123456789",
        "aicm-test-session-2f9071bee6",
    ]


def test_a_session_vhost_is_kept_while_its_process_runs() -> None:
    assert health.VHOST_PREFIX == VHOST_PREFIX
    mine = vhost_name("session")
    assert health.leftover_vhosts([mine]) == []
    assert health.leftover_vhosts([mine], alive=lambda pid: False) == [mine]


def _fake_process(proc: Path, pid: int, *argv: str) -> None:
    (proc / str(pid)).mkdir()
    (proc / str(pid) / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")


SYSTEM_BEAM = ("/usr/lib/erlang/erts-13.1.5/bin/beam.smp", "-B", "-home", "/var/lib/rabbitmq")
PRIVATE_BEAM = ("/usr/lib/erlang/erts-13.1.5/bin/beam.smp", "-B", "-home", "/tmp/x/rabbitmq")


@pytest.fixture
def host(tmp_path: Path) -> tuple[Path, Path]:
    """``(proc, mnesia)``: a /proc and a RabbitMQ mnesia directory of the test's own."""
    proc, mnesia = tmp_path / "proc", tmp_path / "mnesia"
    proc.mkdir()
    mnesia.mkdir()
    return proc, mnesia


def test_the_node_pid_comes_from_the_pid_file_when_it_names_the_system_beam(host) -> None:
    proc, mnesia = host
    _fake_process(proc, 40, *PRIVATE_BEAM)
    _fake_process(proc, 41, *SYSTEM_BEAM)
    (mnesia / "rabbit@localhost.pid").write_text("41\n")
    assert health.node_pid("rabbit@localhost", mnesia, proc) == 41


def test_without_a_pid_file_the_system_beam_is_found_and_a_private_node_never_is(host) -> None:
    proc, mnesia = host
    _fake_process(proc, 40, *PRIVATE_BEAM)
    _fake_process(proc, 7, "/bin/sleep", "-home", "/var/lib/rabbitmq")
    (mnesia / "rabbit@localhost.pid").write_text("40\n")  # stale: a test node's pid now
    assert health.node_pid("rabbit@localhost", mnesia, proc) is None
    _fake_process(proc, 42, *SYSTEM_BEAM)
    assert health.node_pid("rabbit@localhost", mnesia, proc) == 42
