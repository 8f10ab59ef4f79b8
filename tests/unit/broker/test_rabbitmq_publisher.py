"""The RabbitMQ target's decisions, off the wire: what goes where, what is refused,
when a call is tried again. The real broker's side is in
tests/integration/test_rabbitmq_producer.py."""

from __future__ import annotations

import functools
import os
import time
from typing import Any

import pytest

from aicm_tasks.broker.rabbitmq import publisher as publisher_module
from aicm_tasks.broker.rabbitmq.names import RabbitNames
from aicm_tasks.broker.rabbitmq.publisher import RabbitTarget, _Link
from aicm_tasks.errors import RecordsRefusedError
from aicm_tasks.producer.record import build_record

NAMES = RabbitNames(queue="t.unit.tracking")


class FakePublishes:
    """A channel in confirm mode whose ``wait`` answers what the test says."""

    def __init__(self, answers: list[Any]) -> None:
        self.answers = answers
        self.published: list[tuple[str, str, bytes]] = []
        self.next_tag = 1
        self.channel = self

    def publish(self, body: bytes, *, routing_key: str, exchange: str = "") -> int:
        self.published.append((exchange, routing_key, body))
        self.next_tag += 1
        return self.next_tag - 1

    def wait(self, timeout_s: float) -> set[int]:
        answer = self.answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return set(answer)


class FakeChannel:
    def __init__(self) -> None:
        self.events: dict[str, set[Any]] = {"basic_return": set()}


class FakeConnection:
    def __init__(self) -> None:
        self.collected = False

    def channel(self) -> FakeChannel:
        return FakeChannel()

    def collect(self) -> None:
        self.collected = True


def target_with(publishes: FakePublishes) -> RabbitTarget:
    target = RabbitTarget("amqp://guest:guest@127.0.0.1:1/", NAMES, timeout_s=1.0)
    target._link = _Link(FakeConnection(), publishes, os.getpid())  # type: ignore[arg-type]
    return target


@functools.cache
def message(n: int) -> bytes:
    """Record ``n``'s message, the same bytes each time (its timestamp is set when built)."""
    return build_record("a::b", {"n": n}, response_id=f"r{n}").message


def test_a_list_partly_refused_names_exactly_the_refused_messages() -> None:
    publishes = FakePublishes([{2, 4}])
    target = target_with(publishes)
    with pytest.raises(RecordsRefusedError, match="refused 2 of 5 records") as caught:
        target.push_many([message(n) for n in range(5)])
    assert caught.value.refused == [message(1), message(3)]
    assert target._link is not None  # a nack is an answer, not a broken connection


def test_records_due_later_go_through_the_delay_topology_and_due_ones_to_the_queue() -> None:
    publishes = FakePublishes([set()])
    target = target_with(publishes)
    now = time.time()
    target.schedule([(now + 90.2, b"later"), (now - 5, b"due"), (now + 0.3, b"soon")])
    later, due, soon = publishes.published
    assert due == ("", NAMES.queue, b"due")
    assert later[0] == soon[0] == NAMES.delay_entry
    # Whole seconds, rounded up: 91 s, and a fraction of a second is one.
    assert later[1] == NAMES.delay_routing_key(91)
    assert soon[1] == NAMES.delay_routing_key(1)


def test_a_late_confirm_drops_the_connection_and_is_not_tried_again() -> None:
    publishes = FakePublishes([TimeoutError("1 publishes were not confirmed in 1s")])
    target = target_with(publishes)
    link = target._link
    with pytest.raises(TimeoutError):
        target.push(message(0))
    assert target._link is None and link is not None and link.connection.collected  # type: ignore[attr-defined]
    assert len(publishes.published) == 1


def test_a_stale_connection_is_tried_once_more_on_a_fresh_one(monkeypatch) -> None:
    stale = FakePublishes([ConnectionResetError("reset by peer")])
    fresh = FakePublishes([set()])
    target = target_with(stale)
    opened: list[str] = []

    def ready(deadline: float) -> _Link:
        if target._link is None:
            opened.append("fresh")
            target._link = _Link(FakeConnection(), fresh, os.getpid())  # type: ignore[arg-type]
        return target._link

    monkeypatch.setattr(target, "_ready", ready)
    target.push(message(0))
    assert opened == ["fresh"]
    assert [body for _, _, body in fresh.published] == [message(0)]


def test_a_connection_opened_by_the_call_itself_is_not_tried_twice(monkeypatch) -> None:
    def refused(url: str, *, timeout_s: float, **_: object) -> None:
        raise ConnectionRefusedError("nothing listens")

    monkeypatch.setattr(publisher_module, "open_connection", refused)
    target = RabbitTarget("amqp://guest:guest@127.0.0.1:1/", NAMES, timeout_s=1.0)
    with pytest.raises(ConnectionRefusedError):
        target.push(message(0))
    assert target.answers() is False


def test_a_connection_inherited_across_fork_is_never_used_nor_closed(monkeypatch) -> None:
    parents = FakePublishes([])
    target = target_with(parents)
    assert target._link is not None
    target._link.pid = -1  # as a child sees its parent's link
    inherited = target._link.connection
    mine = FakePublishes([set()])
    monkeypatch.setattr(publisher_module, "open_connection", lambda url, **_: FakeConnection())
    monkeypatch.setattr(publisher_module, "ConfirmedPublishes", lambda channel: mine)
    target.push(message(0))
    assert parents.published == [] and not inherited.collected  # type: ignore[attr-defined]
    assert len(mine.published) == 1
