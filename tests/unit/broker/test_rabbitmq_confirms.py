"""ConfirmedPublishes' bookkeeping of confirms and returns, over a fake channel."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from aicm_tasks.broker.rabbitmq.confirms import ConfirmedPublishes


class FakeChannel:
    """A channel in confirm mode whose broker answers are sent by the test."""

    def __init__(self) -> None:
        self.events: dict[str, set[Any]] = defaultdict(set)
        self.connection = self
        self.published = 0

    def confirm_select(self) -> None:
        pass

    def basic_publish(self, message: Any, **kwargs: Any) -> None:
        self.published += 1

    def drain_events(self, timeout: float | None = None) -> None:
        raise AssertionError("the test confirmed every publish already")

    def ack(self, tag: int, multiple: bool = False) -> None:
        for callback in self.events["basic_ack"]:
            callback(tag, multiple)

    def returned(self) -> None:
        for callback in self.events["basic_return"]:
            callback(312, "NO_ROUTE", "", "q", None)


def test_confirmed_publishes_never_waited_for_are_not_kept() -> None:
    # A worker's figures events are published after each settle and never
    # waited for; on a channel whose batches carry no retry (a healthy day) no
    # wait ever clears the round, so every tag stayed in memory for the
    # connection's life: 10 batches/s a channel is ~860k tags a day a channel.
    channel = FakeChannel()
    publishes = ConfirmedPublishes(channel)  # type: ignore[arg-type]
    for _ in range(1000):
        tag = publishes.publish(b"{}", routing_key="figures")
        channel.ack(tag)
    assert publishes.pending == set()
    assert len(publishes.round) == 0


def test_a_return_still_refuses_every_publish_of_its_round() -> None:
    channel = FakeChannel()
    publishes = ConfirmedPublishes(channel)  # type: ignore[arg-type]
    first = publishes.publish(b"{}", routing_key="q")
    second = publishes.publish(b"{}", routing_key="q")
    channel.returned()  # names no tag: the broker sends it before the ack of its message
    channel.ack(second, multiple=True)
    assert publishes.wait(1.0) == {first, second}


def test_publishes_confirmed_before_a_return_are_not_refused_by_it() -> None:
    # A message's return comes before its confirm on the channel, so one
    # confirmed while no return was seen was routed.
    channel = FakeChannel()
    publishes = ConfirmedPublishes(channel)  # type: ignore[arg-type]
    first = publishes.publish(b"{}", routing_key="figures")
    channel.ack(first)
    second = publishes.publish(b"{}", routing_key="q")
    channel.returned()
    channel.ack(second)
    assert publishes.wait(1.0) == {second}
