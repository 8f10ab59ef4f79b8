"""RabbitMQ stopped while a producer publishes: records spool, then reach the queue.

On a private node (never the shared broker): a thread publishes with
``track.delay`` while the node is stopped and started again. Every record the
producer returned for is then in the queue exactly once, or twice at most for
a record whose confirm was lost with the connection (spooled as well: an
idempotent ``response_id``, which ``docs/guarantees.md`` allows), and the
spool is empty.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter
from pathlib import Path

from aicm_tasks.broker.messages import decode
from aicm_tasks.broker.rabbitmq.connection import close_quietly, open_connection
from aicm_tasks.devtools.processes import wait_until
from tests.support.rabbitmq_faults import private_producer
from tests.support.rabbitmq_node import PrivateRabbit
from tests.support.tasks import spool_of


def take_all(url: str, queue: str) -> list[str]:
    """Every response_id in ``queue`` (taken), in queue order."""
    connection = open_connection(url, timeout_s=10)
    ids: list[str] = []
    try:
        channel = connection.channel()
        while (message := channel.basic_get(queue, no_ack=True)) is not None:
            body = message.body
            ids.append(decode(body if isinstance(body, bytes) else body.encode()).response_id)
    finally:
        close_quietly(connection)
    return ids


def test_records_published_while_rabbitmq_stops_are_spooled_then_land_once(
    private_rabbitmq: PrivateRabbit, tmp_path: Path
) -> None:
    names, track = private_producer(private_rabbitmq, tmp_path, publish_timeout_s=1.0)
    spool = spool_of(track)
    published: list[str] = []
    stop = threading.Event()
    spooled_ever: list[str] = []
    append_many = spool.append_many

    def remember(messages, due_epoch_s=None):
        append_many(messages, due_epoch_s)
        spooled_ever.extend(decode(message).response_id for message in messages)

    spool.append_many = remember  # type: ignore[method-assign]

    def publish() -> None:
        for n in itertools.count():
            if stop.is_set():
                return
            published.append(track.delay("a::b", {"n": n}, response_id=f"r{n}").id)
            time.sleep(0.002)

    publisher = threading.Thread(target=publish, daemon=True)
    publisher.start()
    try:
        wait_until(lambda: len(published) >= 100, 60, "records published before the stop")
        private_rabbitmq.stop()
        wait_until(lambda: spool.status().records >= 50, 60, "records spooled while it is down")
        private_rabbitmq.start()
        at_restart = len(published)
        wait_until(lambda: len(published) >= at_restart + 100, 60, "records published after")
    finally:
        stop.set()
        publisher.join(30)
    assert not publisher.is_alive()

    # The producer's own drainer pushes the spool back, with no further call.
    wait_until(lambda: spool.status().records == 0, 60, "the spool to drain")
    landed = take_all(private_rabbitmq.url, names.queue)
    counts = Counter(landed)
    assert set(counts) == set(published)  # 0 lost, nothing foreign
    assert len(published) == len(set(published))
    assert len(spooled_ever) >= 50
    # A duplicate only of a record spooled because its confirm did not arrive
    # (the broker may have taken it as it stopped), and never more than one copy.
    duplicates = {rid for rid, count in counts.items() if count > 1}
    assert duplicates <= set(spooled_ever)
    assert max(counts.values()) <= 2
    assert sum(counts.values()) == len(published) + len(duplicates)


def test_the_first_publish_after_a_restart_goes_through_on_a_fresh_connection(
    private_rabbitmq: PrivateRabbit, tmp_path: Path
) -> None:
    names, track = private_producer(private_rabbitmq, tmp_path, publish_timeout_s=2.0)
    track.delay("a::b", {"n": 0}, response_id="before")  # opens the process's connection
    private_rabbitmq.stop()
    private_rabbitmq.start()
    # The connection opened before the restart is dead; the call tries once more
    # on a fresh one instead of spooling a record the broker would take.
    track.delay("a::b", {"n": 1}, response_id="after")
    assert spool_of(track).status().records == 0
    assert take_all(private_rabbitmq.url, names.queue) == ["before", "after"]
