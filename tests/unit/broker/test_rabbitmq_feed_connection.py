"""FeedConnection's own record of its socket's timeout, over a fake py-amqp connection."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

from aicm_tasks.broker.rabbitmq import consumer
from aicm_tasks.broker.rabbitmq.consumer import FeedConnection
from aicm_tasks.broker.rabbitmq.names import RabbitNames


@dataclass
class FakeSocket:
    """A socket as py-amqp leaves it after connecting: blocking (no Python timeout;
    its read and write bounds are SO_RCVTIMEO/SO_SNDTIMEO)."""

    timeout: float | None = None
    set_to: list[float | None] = field(default_factory=list)

    def gettimeout(self) -> float | None:
        return self.timeout

    def settimeout(self, timeout: float | None) -> None:
        self.timeout = timeout
        self.set_to.append(timeout)


def test_writes_before_the_first_read_get_the_connection_timeout_on_the_socket(
    monkeypatch,
) -> None:
    sock = FakeSocket()
    fake = SimpleNamespace(transport=SimpleNamespace(sock=sock, _read_buffer=b""))
    monkeypatch.setattr(consumer, "open_connection", lambda url, timeout_s: fake)
    monkeypatch.setattr(consumer, "read_ahead", lambda connection: True)
    connection = FeedConnection(
        "amqp://x", RabbitNames("q", "p"), feeds=0, prefetch=1, timeout_s=10.0
    )
    connection.for_writes()
    assert sock.timeout == 10.0
    connection.for_writes()
    assert sock.set_to == [10.0]  # set once, only when it changes
