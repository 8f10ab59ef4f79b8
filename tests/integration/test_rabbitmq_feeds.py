"""A worker's reading connection on a real RabbitMQ: feeds, read-ahead, acks per channel.

The reading loop's rules are unit-tested over fakes
(tests/unit/worker/test_rabbitmq_reader.py); here the broker's side: frames
sliced from the read-ahead buffer come out whole (small and large bodies),
RabbitMQ spreads deliveries over the channels, an ack on one channel leaves
the others' deliveries unacknowledged, and closing returns them all.
"""

from __future__ import annotations

import os

import pytest

from aicm_tasks.broker.rabbitmq.connection import close_quietly, open_connection, read_ahead
from aicm_tasks.broker.rabbitmq.consumer import FeedConnection
from aicm_tasks.broker.rabbitmq.names import RabbitNames
from aicm_tasks.broker.rabbitmq.topology import declare_topology
from aicm_tasks.broker.resolution import Resolution
from aicm_tasks.devtools.processes import wait_until
from tests.support.rabbitmq import RabbitVhost
from tests.support.rabbitmq_messages import publish_all, queue_counts
from tests.support.rabbitmq_topology import RabbitTopologies

pytestmark = pytest.mark.integration


def read_all(feeds: FeedConnection, count: int) -> None:
    def arrived() -> bool:
        feeds.read(0.05)
        return sum(len(feed.waiting) for feed in feeds.feeds) >= count

    wait_until(arrived, 30, f"{count} deliveries")


def test_read_ahead_replaces_only_how_much_is_asked_of_the_socket(
    rabbitmq_vhost: RabbitVhost,
) -> None:
    connection = open_connection(rabbitmq_vhost.url, timeout_s=10)
    try:
        recv = connection.transport._quick_recv
        assert read_ahead(connection)
        assert connection.transport._quick_recv is not recv
    finally:
        close_quietly(connection)

    class NoTransport:
        pass

    assert not read_ahead(NoTransport())  # type: ignore[arg-type]


def test_every_body_comes_out_whole_through_the_read_ahead_buffer(
    rabbitmq_vhost: RabbitVhost, rabbit_topologies: RabbitTopologies
) -> None:
    names = rabbit_topologies.new()
    declare_topology(rabbitmq_vhost.url, names)
    # Bodies of 0 bytes to past the frame size (a body split over frames),
    # and many small ones, so frames straddle every 8 KiB read.
    bodies = [os.urandom(size) for size in (0, 1, 7, 8, 8191, 8192, 8193, 131_072, 300_000)]
    bodies += [b"%05d" % n * (n % 50 + 1) for n in range(2000)]
    publish_all(rabbitmq_vhost.url, names.queue, bodies)
    feeds = FeedConnection(rabbitmq_vhost.url, names, feeds=1, prefetch=len(bodies), timeout_s=10)
    try:
        read_all(feeds, len(bodies))
        batch = feeds.feeds[0].cut(len(bodies))
        assert batch.bodies == bodies
        assert batch.last_tag == len(bodies)
    finally:
        feeds.close()


def three_full_feeds(url: str, names: RabbitNames) -> FeedConnection:
    """60 records read by a connection of 3 feeds with a prefetch of 20 each."""
    declare_topology(url, names)
    publish_all(url, names.queue, [b"r%d" % n for n in range(60)])
    feeds = FeedConnection(url, names, feeds=3, prefetch=20, timeout_s=10)
    try:
        read_all(feeds, 60)
    except BaseException:
        feeds.close()
        raise
    return feeds


def test_an_ack_on_one_channel_leaves_the_other_channels_deliveries_to_the_broker(
    rabbitmq_vhost: RabbitVhost, rabbit_topologies: RabbitTopologies
) -> None:
    names = rabbit_topologies.new()
    feeds = three_full_feeds(rabbitmq_vhost.url, names)
    try:
        assert [len(feed.waiting) for feed in feeds.feeds] == [20, 20, 20]
        first = feeds.feeds[0]
        batch = first.cut(20)
        feeds.for_writes()
        first.settle(batch, Resolution(), consumer="test")
        # The ack's tag is also a tag of the other channels: they keep theirs.
        feeds.read(0.2)
        probe = open_connection(rabbitmq_vhost.url, timeout_s=10)
        try:
            assert queue_counts(probe.channel(), names.queue) == (0, 3)
        finally:
            close_quietly(probe)
    finally:
        feeds.close()
    probe = open_connection(rabbitmq_vhost.url, timeout_s=10)
    try:
        wait_until(
            lambda: queue_counts(probe.channel(), names.queue) == (40, 0),
            30,
            "the two unacknowledged channels' 40 deliveries back in the queue",
        )
    finally:
        close_quietly(probe)


def test_renewing_a_channel_returns_its_deliveries_only(
    rabbitmq_vhost: RabbitVhost, rabbit_topologies: RabbitTopologies
) -> None:
    names = rabbit_topologies.new()
    feeds = three_full_feeds(rabbitmq_vhost.url, names)
    try:
        kept = [[m.body for m in feed.waiting] for feed in feeds.feeds[1:]]
        returned = sorted(m.body for m in feeds.feeds[0].waiting)
        feeds.for_writes()
        fresh = feeds.renew(0)
        assert feeds.feeds[0] is fresh and not fresh.waiting
        read_all(feeds, 60)  # the 20 come back, to the only channel with room
        assert sorted(m.body for m in fresh.waiting) == returned
        assert all(m.delivery_info["redelivered"] for m in fresh.waiting)
        assert [[m.body for m in feed.waiting] for feed in feeds.feeds[1:]] == kept
    finally:
        feeds.close()
