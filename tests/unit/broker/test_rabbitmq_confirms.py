"""ConfirmedPublishes' bookkeeping of confirms and returns, and what a settle makes of
it, over fake channels (no broker)."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from aicm_tasks.broker.rabbitmq.confirms import ConfirmedPublishes
from aicm_tasks.broker.rabbitmq.consumer import Batch, ChannelFeed
from aicm_tasks.broker.rabbitmq.names import RabbitNames
from aicm_tasks.broker.resolution import Resolution


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


class FakeFeedChannel(FakeChannel):
    """A consuming channel whose broker answers publishes at the next read:
    ``nack_next`` tags refused, the rest confirmed."""

    def __init__(self) -> None:
        super().__init__()
        self.nack_next: set[int] = set()
        self.unconfirmed: list[int] = []
        self.acked: list[tuple[int, bool]] = []

    def basic_qos(self, **kwargs: Any) -> None:
        pass

    def basic_consume(self, queue: str, **kwargs: Any) -> None:
        pass

    def basic_publish(self, message: Any, **kwargs: Any) -> None:
        super().basic_publish(message, **kwargs)
        self.unconfirmed.append(self.published)

    def drain_events(self, timeout: float | None = None) -> None:
        for tag in self.unconfirmed:
            if tag in self.nack_next:
                for callback in self.events["basic_nack"]:
                    callback(tag, False)
            else:
                self.ack(tag)
        self.unconfirmed = []

    def basic_ack(self, tag: int, multiple: bool = False) -> None:
        self.acked.append((tag, multiple))


def test_a_refused_figures_event_does_not_fail_the_next_batchs_settle() -> None:
    # Figures are not waited for (a lost one is a wrong rate, never a lost
    # record), but a nack of one stayed in ``refused`` and the next batch with a
    # retry raised SettleError: the worker dropped its connection and RabbitMQ
    # returned every channel's deliveries (up to 4 x 1,000), all posted again.
    channel = FakeFeedChannel()
    connection = type("Conn", (), {"channel": lambda self: channel})()
    feed = ChannelFeed(connection, RabbitNames("q", "p"), prefetch=10)
    channel.nack_next = {1}  # the first batch's figures event
    feed.settle(Batch([b"{}"], [], 1), Resolution(stats={"delivered": 1}), consumer="c")
    channel.drain_events()  # the reader reads on: the nack arrives
    feed.settle(
        Batch([b"{}"], [], 2),
        Resolution(retries=[(5.0, b"{}")], stats={"retried": 1}),
        consumer="c",
        timeout_s=1.0,
    )
    assert channel.acked == [(1, True), (2, True)]
