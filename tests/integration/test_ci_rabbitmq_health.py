"""``.ci/rabbitmq_health.py`` against real RabbitMQ nodes: the shared broker
answers the handshake, and a node of the test's own frozen with SIGSTOP (its
listener still completing TCP handshakes from the kernel's backlog, nothing
answering: what the wedged 3.10 node looked like) is reported wedged, then
healthy again once it runs. The shared broker is never stopped.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.support.ci_health import load_ci_health
from tests.support.rabbitmq import TEST_RABBITMQ_URL, broker_answers
from tests.support.rabbitmq_node import PrivateRabbit

health = load_ci_health()


def test_the_shared_broker_answers_the_handshake() -> None:
    problem = broker_answers(TEST_RABBITMQ_URL)
    if problem is not None:
        if os.environ.get("CI"):
            pytest.fail(f"CI needs a RabbitMQ: {problem}")
        pytest.skip(f"no RabbitMQ: {problem}")
    parts = urlsplit(TEST_RABBITMQ_URL)
    health.amqp_handshake(parts.hostname or "127.0.0.1", parts.port or 5672, timeout_s=5)


def _beam_pids(node: PrivateRabbit) -> list[int]:
    """The node's beam.smp processes: those of its process group (start_new_session)."""
    assert node.process is not None
    group = node.process.pid
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            same_group = os.getpgid(int(entry.name)) == group
            argv0 = (entry / "cmdline").read_bytes().split(b"\0")[0]
        except OSError:
            continue
        if same_group and argv0.endswith(b"beam.smp"):
            pids.append(int(entry.name))
    return pids


@contextmanager
def frozen(pids: list[int]) -> Iterator[None]:
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)


def test_a_frozen_node_is_reported_wedged_and_healthy_once_it_runs_again(
    private_rabbitmq: PrivateRabbit,
) -> None:
    port = private_rabbitmq.port
    health.amqp_handshake("127.0.0.1", port, timeout_s=5)
    beams = _beam_pids(private_rabbitmq)
    assert beams, "the private node's beam.smp was not found"
    with frozen(beams):
        with pytest.raises(health.HandshakeError, match="no Connection.Start") as caught:
            health.amqp_handshake("127.0.0.1", port, timeout_s=2)
        assert caught.value.accepted
    health.amqp_handshake("127.0.0.1", port, timeout_s=30)
