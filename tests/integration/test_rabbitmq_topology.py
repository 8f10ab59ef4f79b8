"""The RabbitMQ transport's ground, on a real RabbitMQ (a private vhost per session).

Declaring the topology twice, confirmed publishes (one wait for a list), a
refused publish reported by tag, a delayed record coming back through
kombu's native delayed delivery under our prefix, and a test's topology
deleted whole (what keeps the session vhost from piling up queues).
"""

from __future__ import annotations

import time

import amqp
import pytest

from aicm_tasks.broker.rabbitmq.confirms import ConfirmedPublishes
from aicm_tasks.broker.rabbitmq.connection import AmqpTarget, close_quietly, open_connection
from aicm_tasks.broker.rabbitmq.names import RabbitNames
from aicm_tasks.broker.rabbitmq.topology import declare_topology
from tests.support.rabbitmq_messages import queue_counts, read_stream
from tests.support.rabbitmq_topology import (
    RabbitTopologies,
    delete_topology,
    fresh_names,
    topology_members,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def names(rabbit_topologies: RabbitTopologies) -> RabbitNames:
    """A record queue of the test's own (the session's shared delay levels), deleted after."""
    return rabbit_topologies.new()


def _drain(connection, queue: str, expected: int, timeout_s: float) -> list[bytes]:
    channel = connection.channel()
    bodies: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    while len(bodies) < expected and time.monotonic() < deadline:
        message = channel.basic_get(queue, no_ack=True)
        if message is None:
            time.sleep(0.1)
            continue
        bodies.append(bytes(message.body))
    channel.close()
    return bodies


def test_the_url_splits_as_py_amqp_takes_it():
    target = AmqpTarget.from_url("amqps://u%40x:p%2Fw@rabbit:6000/%2F")
    assert (target.host, target.userid, target.password, target.virtual_host, target.tls) == (
        "rabbit:6000",
        "u@x",
        "p/w",
        "/",
        True,
    )
    assert AmqpTarget.from_url("amqp://h").virtual_host == "/"
    assert AmqpTarget.from_url("amqp://h/billing").host == "h:5672"


def test_the_topology_declares_twice_and_a_confirmed_list_lands_whole(rabbitmq_vhost, names):
    declare_topology(rabbitmq_vhost.url, names)
    declare_topology(rabbitmq_vhost.url, names)  # the same arguments: no 406
    connection = open_connection(rabbitmq_vhost.url, timeout_s=5)
    try:
        publishes = ConfirmedPublishes(connection.channel())
        tags = [publishes.publish(b'{"n":%d}' % n, routing_key=names.queue) for n in range(5)]
        assert tags == [1, 2, 3, 4, 5]
        assert publishes.wait(5) == set()
        assert queue_counts(connection.channel(), names.queue) == (5, 0)
        for stream in (names.dead_letters, names.figures, names.limits):
            publishes.publish(b'{"event":"x"}', routing_key=stream)
        assert publishes.wait(5) == set()
        assert len(read_stream(connection, names.figures, "first", 1)) == 1
    finally:
        close_quietly(connection)


def test_a_publish_no_queue_takes_is_refused_with_its_round(rabbitmq_vhost, names):
    declare_topology(rabbitmq_vhost.url, names)
    connection = open_connection(rabbitmq_vhost.url, timeout_s=5)
    try:
        publishes = ConfirmedPublishes(connection.channel())
        kept = publishes.publish(b"{}", routing_key=names.queue)
        lost = publishes.publish(b"{}", routing_key=f"{names.queue}.missing")
        assert publishes.wait(5) == {kept, lost}
        # The next round starts clean.
        again = publishes.publish(b"{}", routing_key=names.queue)
        assert publishes.wait(5) == set()
        assert again == 3
    finally:
        close_quietly(connection)


def test_a_delayed_record_comes_back_to_its_queue_after_its_delay(rabbitmq_vhost, names):
    declare_topology(rabbitmq_vhost.url, names)
    connection = open_connection(rabbitmq_vhost.url, timeout_s=5)
    try:
        publishes = ConfirmedPublishes(connection.channel())
        publishes.publish(
            b'{"late":1}', exchange=names.delay_entry, routing_key=names.delay_routing_key(1.2)
        )
        assert publishes.wait(5) == set()
        assert queue_counts(connection.channel(), names.queue)[0] == 0
        assert _drain(connection, names.queue, 1, timeout_s=15) == [b'{"late":1}']
    finally:
        close_quietly(connection)


def test_the_delay_routing_key_rounds_up_to_whole_seconds_within_kombus_range():
    names = RabbitNames(queue="q")
    assert names.delay_routing_key(0).endswith("0.0.1.q")
    assert names.delay_routing_key(1.2).endswith("1.0.q")
    assert names.delay_routing_key(float(2**40)).startswith("1.1.1")


def _exists(url: str, kind: str, name: str) -> bool:
    """Passive declare on a fresh channel (a NotFound closes the channel)."""
    connection = open_connection(url, timeout_s=10)
    try:
        channel = connection.channel()
        if kind == "queue":
            channel.queue_declare(name, passive=True)
        else:
            channel.exchange_declare(name, "topic", passive=True)
        return True
    except amqp.exceptions.NotFound:
        return False
    finally:
        close_quietly(connection)


def test_a_tests_topology_is_deleted_whole_and_deleting_it_again_is_harmless(rabbitmq_vhost):
    # What the rabbit_topologies fixture and rabbit_pipeline do at a test's end.
    names = fresh_names(own_delays=True)
    declare_topology(rabbitmq_vhost.url, names)
    queues, exchanges = topology_members(names)
    assert len(queues) == 5 + 28 and len(exchanges) == 2 + 28 + 1
    assert all(_exists(rabbitmq_vhost.url, "queue", queue) for queue in queues)
    assert all(_exists(rabbitmq_vhost.url, "exchange", exchange) for exchange in exchanges)
    delete_topology(rabbitmq_vhost.url, names)
    assert not any(_exists(rabbitmq_vhost.url, "queue", queue) for queue in queues)
    assert not any(_exists(rabbitmq_vhost.url, "exchange", exchange) for exchange in exchanges)
    delete_topology(rabbitmq_vhost.url, names)


def test_the_shared_delay_levels_are_kept_for_the_sessions_other_tests(rabbitmq_vhost):
    names = fresh_names()
    declare_topology(rabbitmq_vhost.url, names)
    delete_topology(rabbitmq_vhost.url, names)
    assert not _exists(rabbitmq_vhost.url, "queue", names.queue)
    assert all(_exists(rabbitmq_vhost.url, "queue", level) for level in names.delay_levels())
