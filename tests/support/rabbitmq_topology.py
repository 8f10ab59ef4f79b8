"""Each test's RabbitMQ topology deleted at its end, so a session vhost does not pile up.

A test declares a whole topology of its own (:func:`declare_topology`: record
queue, parked queue, three streams, and, under a delay prefix of its own, 28
quorum delay queues with their exchanges) so that its counts are its alone.
Left until the session's vhost is deleted, they piled up: 405 queues in one
session vhost last run (one Raft group per quorum queue on the shared node,
which wedged under that load). :class:`RabbitTopologies` deletes what a test
made at its end; the default prefix's delay levels (``aicm_celery_delayed_*``)
are shared by the session's tests and left to the vhost's deletion, as are
Celery's own (``celery_delayed_*`` and ``aicm.tasks``, declared by any worker).

Queues left in the session vhost after each RabbitMQ test file (one session
each, rabbitmqctl list_queues), before and after this: topology 43 -> 28, dlq
63 -> 28, producer 103 -> 28, status 234 -> 0, pipeline 228 -> 57, faults 194
-> 29 (the 28s and 57s are those shared levels).
"""

from __future__ import annotations

import uuid

from aicm_tasks.broker.rabbitmq.connection import close_quietly, open_connection
from aicm_tasks.broker.rabbitmq.names import RabbitNames

#: The delay prefix the session's tests share (RabbitNames' default): never deleted per test.
SHARED_PREFIX = RabbitNames().prefix


def fresh_names(*, own_delays: bool = False) -> RabbitNames:
    """A record queue name of the test's own (``t.<random>.tracking``); with
    ``own_delays``, a delay prefix of its own too (28 more queues, ~0.5 s to declare)."""
    tag = uuid.uuid4().hex[:8]
    return RabbitNames(f"t.{tag}.tracking", f"t{tag}" if own_delays else SHARED_PREFIX)


def topology_members(names: RabbitNames) -> tuple[list[str], list[str]]:
    """``(queues, exchanges)`` :func:`declare_topology` makes for ``names``, the delay
    levels included unless the prefix is :data:`SHARED_PREFIX`."""
    queues = [names.queue, names.parked, names.dead_letters, names.figures, names.limits]
    exchanges = [names.records_exchange, names.parked]
    if names.prefix != SHARED_PREFIX:
        levels = names.delay_levels()
        queues += levels
        exchanges += [*levels, f"{names.prefix}_celery_delayed_delivery"]
    return queues, exchanges


def delete_topology(url: str, names: RabbitNames) -> None:
    """Delete :func:`topology_members` of ``names`` (RabbitMQ answers delete-ok for a
    queue or exchange that is not there, so a half-declared topology goes too)."""
    queues, exchanges = topology_members(names)
    connection = open_connection(url, timeout_s=10)
    try:
        channel = connection.channel()
        for queue in queues:
            channel.queue_delete(queue)
        for exchange in exchanges:
            channel.exchange_delete(exchange)
    finally:
        close_quietly(connection)


class RabbitTopologies:
    """The topologies one test made on ``url``: :meth:`delete_all` at its end."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.made: list[RabbitNames] = []

    def new(self, *, own_delays: bool = False) -> RabbitNames:
        """:func:`fresh_names`, deleted at the test's end."""
        return self.track(fresh_names(own_delays=own_delays))

    def track(self, names: RabbitNames) -> RabbitNames:
        """Delete ``names``' topology at the test's end (names made by hand)."""
        self.made.append(names)
        return names

    def delete_all(self) -> None:
        """Delete every tracked topology."""
        for names in self.made:
            delete_topology(self.url, names)
        self.made.clear()
