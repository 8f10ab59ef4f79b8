"""The producer on a real RabbitMQ: ``AICM_BROKER_URL=amqp://...`` alone.

Each test has its own queue in the session's private vhost. Records are read
back from the quorum queue itself (``basic_get``) and decoded with
``broker/messages.py``; spooled ones are read from the spool's SQLite file, so
every record is accounted for: in the queue, or in the spool, never both,
never neither (a duplicate only where a confirm was lost, and then named).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import time
import uuid
from pathlib import Path

import amqp
import pytest
import redis

from aicm_tasks import create_app
from aicm_tasks.broker.messages import decode
from aicm_tasks.broker.rabbitmq.connection import close_quietly, open_connection
from aicm_tasks.broker.rabbitmq.names import RabbitNames
from aicm_tasks.broker.rabbitmq.topology import declare_record_queue, declare_topology
from aicm_tasks.devtools.processes import free_port
from aicm_tasks.producer.aio import track_async, track_many_async
from aicm_tasks.producer.limits import check_limits
from aicm_tasks.producer.spool import Spool
from aicm_tasks.settings import Settings
from aicm_tasks.tasks import TrackTask
from tests.support.cli import run_cli
from tests.support.rabbitmq import RabbitVhost
from tests.support.rabbitmq_messages import queue_counts
from tests.support.rabbitmq_topology import RabbitTopologies
from tests.support.tasks import spool_of, track_of

pytestmark = pytest.mark.integration

SECRET = "sk-test-never-in-a-message-0123456789"


@pytest.fixture
def names(rabbit_topologies: RabbitTopologies) -> RabbitNames:
    """A record queue of the test's own (the session's shared delay levels), deleted after."""
    return rabbit_topologies.new()


def settings_for(url: str, names: RabbitNames, tmp_path: Path, **options: object) -> Settings:
    values: dict[str, object] = {
        "broker_url": url,
        "queue": names.queue,
        "key_prefix": names.prefix,
        "spool_dir": tmp_path / "spool",
        "api_key": SECRET,
        "publish_timeout_s": 2.0,
    }
    values.update(options)
    return Settings(**values)  # type: ignore[arg-type]


def producer(settings: Settings) -> TrackTask:
    return track_of(create_app(settings))


def take(url: str, queue: str, expected: int, timeout_s: float = 30) -> list[amqp.Message]:
    """Take (and ack) messages from ``queue`` until ``expected`` arrived or time ran out."""
    connection = open_connection(url, timeout_s=10)
    taken: list[amqp.Message] = []
    try:
        channel = connection.channel()
        deadline = time.monotonic() + timeout_s
        while len(taken) < expected and time.monotonic() < deadline:
            message = channel.basic_get(queue, no_ack=True)
            if message is None:
                time.sleep(0.05)
                continue
            taken.append(message)
    finally:
        close_quietly(connection)
    return taken


def body_of(message: amqp.Message) -> bytes:
    body = message.body
    return body if isinstance(body, bytes) else body.encode()


def ids_of(messages: list[amqp.Message]) -> list[str]:
    return [decode(body_of(message)).response_id for message in messages]


def depth(url: str, queue: str) -> int:
    connection = open_connection(url, timeout_s=10)
    try:
        return queue_counts(connection.channel(), queue)[0]
    finally:
        close_quietly(connection)


def spooled_ids(spool: Spool) -> list[str]:
    """The response_ids waiting in ``spool`` for its destination."""
    if not spool.path.exists():
        return []
    with contextlib.closing(sqlite3.connect(spool.path)) as conn:
        rows = conn.execute(
            "SELECT message FROM records WHERE destination = ?", (spool.destination,)
        ).fetchall()
    return [decode(bytes(row[0])).response_id for row in rows]


def test_track_delay_lands_one_confirmed_persistent_record_without_its_secret(
    rabbitmq_vhost: RabbitVhost, names: RabbitNames, tmp_path: Path
) -> None:
    track = producer(settings_for(rabbitmq_vhost.url, names, tmp_path))
    # No worker has declared anything yet: the first publish declares the queue.
    result = track.delay(
        "openai::gpt-4o-mini", {"input_tokens": 7}, customer_key="acme", response_id="rid-1"
    )
    assert result.id == "rid-1"
    [message] = take(rabbitmq_vhost.url, names.queue, 1)
    assert message.properties["delivery_mode"] == 2
    item = decode(body_of(message))
    assert (item.response_id, item.service_key, item.malformed) == (
        "rid-1",
        "openai::gpt-4o-mini",
        None,
    )
    record = json.loads(item.body)
    assert (record["customer_key"], record["payload"]) == ("acme", {"input_tokens": 7})
    assert SECRET not in body_of(message).decode()
    assert SECRET not in json.dumps(message.properties, default=str)
    # It is the billing queue: the same arguments declare it again without a 406.
    connection = open_connection(rabbitmq_vhost.url, timeout_s=10)
    try:
        declare_record_queue(connection.channel(), names)
    finally:
        close_quietly(connection)
    assert spool_of(track).status().records == 0


def test_track_many_of_a_thousand_lands_whole(
    rabbitmq_vhost: RabbitVhost, names: RabbitNames, tmp_path: Path
) -> None:
    declare_topology(rabbitmq_vhost.url, names)
    track = producer(settings_for(rabbitmq_vhost.url, names, tmp_path))
    ids = track.many({"service_key": "a::b", "usage": {"n": n}} for n in range(1000))
    assert len(set(ids)) == 1000
    assert ids_of(take(rabbitmq_vhost.url, names.queue, 1000)) == ids  # in order, once each
    assert depth(rabbitmq_vhost.url, names.queue) == 0
    assert spool_of(track).status().records == 0


def test_a_countdown_record_reaches_the_queue_only_after_its_delay(
    rabbitmq_vhost: RabbitVhost, names: RabbitNames, tmp_path: Path
) -> None:
    declare_topology(rabbitmq_vhost.url, names)
    track = producer(settings_for(rabbitmq_vhost.url, names, tmp_path))
    due = time.time() + 3
    track.apply_async(("a::b", {"n": 1}), {"response_id": "later"}, countdown=3)
    track.delay("a::b", {"n": 2}, response_id="now")
    assert ids_of(take(rabbitmq_vhost.url, names.queue, 1)) == ["now"]
    if time.time() < due:  # checked only while it is certainly not due yet
        assert depth(rabbitmq_vhost.url, names.queue) == 0
    [late] = take(rabbitmq_vhost.url, names.queue, 1, timeout_s=60)
    arrived = time.time()
    assert ids_of([late]) == ["later"]
    assert arrived >= due  # the delay rounds up to whole seconds, never down
    assert spool_of(track).status().records == 0


def test_a_countdown_before_any_worker_declares_the_delay_topology(
    rabbitmq_vhost: RabbitVhost,
    names: RabbitNames,
    rabbit_topologies: RabbitTopologies,
    tmp_path: Path,
) -> None:
    names = rabbit_topologies.track(
        RabbitNames(queue=names.queue, prefix=f"p{uuid.uuid4().hex[:6]}")
    )
    track = producer(settings_for(rabbitmq_vhost.url, names, tmp_path, publish_timeout_s=10.0))
    track.apply_async(("a::b", {"n": 1}), {"response_id": "first-later"}, countdown=1)
    assert ids_of(take(rabbitmq_vhost.url, names.queue, 1, timeout_s=60)) == ["first-later"]
    assert spool_of(track).status().records == 0


def test_records_published_to_a_closed_port_are_spooled_then_drained_by_the_cli(
    rabbitmq_vhost: RabbitVhost, names: RabbitNames, tmp_path: Path
) -> None:
    closed = f"amqp://guest:guest@127.0.0.1:{free_port()}/"
    track = producer(settings_for(closed, names, tmp_path, publish_timeout_s=0.5))
    singles = [track.delay("a::b", {"n": n}).id for n in range(5)]
    many = track.many({"service_key": "a::b", "usage": {"n": n}} for n in range(20))
    later = track.apply_async(("a::b", {"n": 0}), countdown=1).id
    spool = spool_of(track)
    assert sorted(spooled_ids(spool)) == sorted([*singles, *many, later])

    declare_topology(rabbitmq_vhost.url, names)
    done = run_cli(
        "spool",
        "drain",
        "--json",
        env={
            "AICM_BROKER_URL": rabbitmq_vhost.url,
            "AICM_QUEUE": names.queue,
            "AICM_KEY_PREFIX": names.prefix,
            "AICM_SPOOL_DIR": str(spool.directory),
        },
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"pushed": 26}
    assert spooled_ids(spool) == []
    landed = ids_of(take(rabbitmq_vhost.url, names.queue, 26, timeout_s=60))
    assert sorted(landed) == sorted([*singles, *many, later])


def test_a_full_queue_nacks_and_exactly_the_refused_records_are_spooled(
    rabbitmq_vhost: RabbitVhost, names: RabbitNames, tmp_path: Path
) -> None:
    connection = open_connection(rabbitmq_vhost.url, timeout_s=10)
    try:
        declare_record_queue(connection.channel(), names, max_length=3)
    finally:
        close_quietly(connection)
    track = producer(settings_for(rabbitmq_vhost.url, names, tmp_path))
    spool = spool_of(track)
    published: list[str] = []
    # The quorum limit is soft (docs/design/rabbitmq.md): publish until one is refused.
    while not spooled_ids(spool):
        published.append(track.delay("a::b", {"n": len(published)}).id)
        assert len(published) < 50
    # A list into the full queue: refused whole, each record spooled once.
    published += track.many({"service_key": "a::b", "usage": {"n": n}} for n in range(20))
    # The publisher's drain thread would move records while they are counted.
    spool.stop_drainer()
    if spool._thread is not None:
        spool._thread.join(30)
    in_queue = depth(rabbitmq_vhost.url, names.queue)
    spooled = spooled_ids(spool)
    assert in_queue + len(spooled) == len(published)
    assert len(set(spooled)) == len(spooled)

    taken = ids_of(take(rabbitmq_vhost.url, names.queue, in_queue))
    assert set(taken).isdisjoint(spooled)
    assert sorted(taken + spooled) == sorted(published)
    # Room again: the spool drains into the queue (in chunks the queue may refuse
    # in part, each time keeping exactly what it refused).
    landed: list[str] = []
    deadline = time.monotonic() + 60
    while spooled_ids(spool) and time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            spool.drain(track.publisher.target)
        landed += ids_of(
            take(rabbitmq_vhost.url, names.queue, depth(rabbitmq_vhost.url, names.queue))
        )
    assert spooled_ids(spool) == []
    landed += ids_of(take(rabbitmq_vhost.url, names.queue, depth(rabbitmq_vhost.url, names.queue)))
    assert sorted(taken + landed) == sorted(published)


def test_a_deleted_queue_is_declared_again_and_delayed_records_still_return(
    rabbitmq_vhost: RabbitVhost, names: RabbitNames, tmp_path: Path
) -> None:
    declare_topology(rabbitmq_vhost.url, names)
    track = producer(settings_for(rabbitmq_vhost.url, names, tmp_path))
    track.delay("a::b", {"n": 0}, response_id="before")
    connection = open_connection(rabbitmq_vhost.url, timeout_s=10)
    try:
        connection.channel().queue_delete(names.queue)
    finally:
        close_quietly(connection)
    # The same connection publishes: the record comes back (mandatory), the queue
    # is declared again with its bindings, and the record published once more.
    track.delay("a::b", {"n": 1}, response_id="after")
    track.apply_async(("a::b", {"n": 2}), {"response_id": "after-later"}, countdown=1)
    assert spool_of(track).status().records == 0
    assert ids_of(take(rabbitmq_vhost.url, names.queue, 2, timeout_s=60)) == [
        "after",
        "after-later",
    ]


def test_a_forked_child_publishes_on_a_connection_of_its_own(
    rabbitmq_vhost: RabbitVhost, names: RabbitNames, tmp_path: Path
) -> None:
    declare_topology(rabbitmq_vhost.url, names)
    track = producer(settings_for(rabbitmq_vhost.url, names, tmp_path))
    track.delay("a::b", {"n": 0}, response_id="parent-0")  # the parent's connection is open
    pid = os.fork()
    if pid == 0:  # the child: publish, and exit without running the parent's cleanup
        code = 1
        try:
            track.many(
                [
                    {"service_key": "a::b", "usage": {"n": n}, "response_id": f"child-{n}"}
                    for n in range(10)
                ]
            )
            track.delay("a::b", {"n": 0}, response_id="child-single")
            code = 0 if spool_of(track).status().records == 0 else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    track.delay("a::b", {"n": 1}, response_id="parent-1")  # the parent's connection still works
    landed = ids_of(take(rabbitmq_vhost.url, names.queue, 13))
    assert sorted(landed) == sorted(
        ["parent-0", "parent-1", "child-single", *(f"child-{n}" for n in range(10))]
    )
    assert spool_of(track).status().records == 0


def test_track_async_and_check_limits_work_on_rabbitmq_without_opening_redis(
    rabbitmq_vhost: RabbitVhost, names: RabbitNames, tmp_path: Path, monkeypatch
) -> None:
    def no_redis(*args: object, **kwargs: object) -> None:
        raise AssertionError("a Redis connection was opened on the RabbitMQ path")

    monkeypatch.setattr(redis.connection.AbstractConnection, "connect", no_redis)
    declare_topology(rabbitmq_vhost.url, names)
    track = producer(settings_for(rabbitmq_vhost.url, names, tmp_path))

    async def publish() -> list[str]:
        one = await track_async("a::b", {"n": 0}, task=track)
        many = await track_many_async(
            [{"service_key": "a::b", "usage": {"n": n}} for n in range(3)], task=track
        )
        return [one, *many]

    ids = asyncio.run(publish())
    assert check_limits("a::b", "acme", raise_on_match=False, task=track) == []
    assert ids_of(take(rabbitmq_vhost.url, names.queue, 4)) == ids


def test_celery_delivery_publishes_the_sdks_records_to_rabbitmq(
    rabbitmq_vhost: RabbitVhost, names: RabbitNames, tmp_path: Path
) -> None:
    from aicm_tasks.producer.sdk import CeleryDelivery

    declare_topology(rabbitmq_vhost.url, names)
    track = producer(settings_for(rabbitmq_vhost.url, names, tmp_path))
    sdk_record = {"service_key": "openai::gpt-4o", "timestamp": "1764570000.5"}
    with CeleryDelivery(task=track) as delivery:
        answer = delivery.enqueue({**sdk_record, "response_id": "sdk-1", "payload": {"n": 1}})
        delivery.deliver({"tracked": [{**sdk_record, "response_id": "sdk-2", "payload": {"n": 2}}]})
    assert answer["response_id"] == "sdk-1"
    assert ids_of(take(rabbitmq_vhost.url, names.queue, 2)) == ["sdk-1", "sdk-2"]


def test_import_sqlite_publishes_an_sdk_queue_to_rabbitmq_once(
    rabbitmq_vhost: RabbitVhost, names: RabbitNames, tmp_path: Path
) -> None:
    declare_topology(rabbitmq_vhost.url, names)
    path = tmp_path / "queue.db"
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("CREATE TABLE queue (id INTEGER PRIMARY KEY, payload TEXT, status TEXT)")
        conn.executemany(
            "INSERT INTO queue (payload, status) VALUES (?, ?)",
            [
                (json.dumps({"service_key": "a::b", "response_id": f"q{n}", "payload": {}}), s)
                for n, s in enumerate(["queued", "processing", "failed", "queued"])
            ],
        )
    env = {"AICM_BROKER_URL": rabbitmq_vhost.url, "AICM_QUEUE": names.queue}
    first = run_cli("import-sqlite", str(path), "--json", env=env)
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["published"] == 4
    again = run_cli("import-sqlite", str(path), "--json", env=env)
    assert json.loads(again.stdout)["published"] == 0
    assert sorted(ids_of(take(rabbitmq_vhost.url, names.queue, 4))) == ["q0", "q1", "q2", "q3"]
    assert depth(rabbitmq_vhost.url, names.queue) == 0
