"""The publisher over fakeredis and the real Redis: push, schedule, and the spool
when the broker does not answer.

A broker that fails is a real one where possible (a port nothing listens on)
and fakeredis with its server disconnected otherwise: both raise the
``redis.ConnectionError`` a publish meets in production.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import fakeredis
import pytest
import redis

from aicm_tasks.broker.keys import Keys
from aicm_tasks.broker.records import RecordStore
from aicm_tasks.devtools.processes import free_port, wait_until
from aicm_tasks.errors import PublishError
from aicm_tasks.producer import publisher as publisher_module
from aicm_tasks.producer import spool as spool_module
from aicm_tasks.producer.publisher import Publisher, producer_topology
from aicm_tasks.producer.record import Record, build_record
from aicm_tasks.producer.shards import ShardedTarget
from aicm_tasks.producer.spool import Spool
from aicm_tasks.settings import Settings
from tests.conftest import TEST_REDIS_URL

QUEUE, PREFIX = "test.publisher", "testpub"
KEYS = Keys(QUEUE, PREFIX)


def settings(tmp_path: Path, **options: object) -> Settings:
    values: dict[str, object] = {
        "broker_url": TEST_REDIS_URL,
        "queue": QUEUE,
        "key_prefix": PREFIX,
        "spool_dir": tmp_path / "spool",
        "publish_timeout_s": 0.5,
    }
    values.update(options)
    return Settings(**values)  # type: ignore[arg-type]


@functools.cache
def record(n: int = 0) -> Record:
    """Record ``n``, the same object each time (its timestamp is set when built)."""
    return build_record("openai::gpt-4o-mini", {"input_tokens": n}, response_id=f"r{n}")


def over(client: redis.Redis, publisher: Publisher) -> Publisher:
    """``publisher`` talking to ``client`` (fakeredis or the test db) instead of its URL."""
    publisher._target = ShardedTarget([RecordStore(client, KEYS)])
    return publisher


@pytest.fixture(autouse=True)
def quick_drainer(monkeypatch: pytest.MonkeyPatch) -> None:
    """The spool's drain thread looks every 50 ms instead of 5 s."""
    monkeypatch.setattr(spool_module, "DRAIN_INTERVAL_S", 0.05)


@pytest.fixture
def publishers() -> Iterator[list[Publisher]]:
    """Publishers made by a test; their drain threads are stopped after it."""
    made: list[Publisher] = []
    yield made
    for publisher in made:
        if publisher.spool is not None:
            publisher.spool.stop_drainer()


def make(tmp_path: Path, made: list[Publisher], **options: object) -> Publisher:
    publisher = Publisher(settings(tmp_path, **options))
    made.append(publisher)
    return publisher


def queued(client: redis.Redis) -> list[bytes]:
    return [cast(bytes, m) for m in reversed(client.lrange(QUEUE, 0, -1))]


# -- the broker answers --------------------------------------------------------------------


def test_a_record_is_pushed_as_its_message(
    any_redis: redis.Redis, tmp_path: Path, publishers: list[Publisher]
) -> None:
    publisher = over(any_redis, make(tmp_path, publishers))
    first, second = record(1), record(2)
    publisher.publish(first)
    publisher.publish(second)
    assert queued(any_redis) == [first.message, second.message]
    assert not publisher.spool or not publisher.spool.has_records()


def test_a_record_due_later_goes_to_the_scheduled_set_at_its_due_time(
    any_redis: redis.Redis, tmp_path: Path, publishers: list[Publisher]
) -> None:
    publisher = over(any_redis, make(tmp_path, publishers))
    due_epoch_s = time.time() + 600
    later = record(3)
    publisher.publish(later, due_epoch_s=due_epoch_s)
    assert queued(any_redis) == []
    assert any_redis.zrange(KEYS.scheduled, 0, -1, withscores=True) == [
        (later.message, pytest.approx(due_epoch_s))
    ]


def test_many_records_are_pushed_in_order(
    any_redis: redis.Redis, tmp_path: Path, publishers: list[Publisher]
) -> None:
    publisher = over(any_redis, make(tmp_path, publishers))
    records = [record(n) for n in range(5)]
    publisher.publish_many(records)
    publisher.publish_many([])
    assert queued(any_redis) == [r.message for r in records]


def test_the_publisher_connects_to_its_url_on_first_use(
    real_redis: redis.Redis, tmp_path: Path, publishers: list[Publisher]
) -> None:
    publisher = make(tmp_path, publishers)
    assert publisher._target is None  # nothing connects at construction
    publisher.publish(record(4))
    assert queued(real_redis) == [record(4).message]


def test_the_producer_client_gives_each_attempt_half_the_publish_budget(tmp_path: Path) -> None:
    (client,) = producer_topology(settings(tmp_path, publish_timeout_s=0.8)).clients
    assert isinstance(client, redis.Redis)
    kwargs = client.connection_pool.connection_kwargs
    assert kwargs["socket_timeout"] == pytest.approx(0.4)
    assert kwargs["socket_connect_timeout"] == pytest.approx(0.4)


# -- the broker does not answer ---------------------------------------------------------------


def unreachable_url(password: str = "") -> str:
    auth = f":{password}@" if password else ""
    return f"redis://{auth}127.0.0.1:{free_port()}/0"


def test_a_record_the_broker_refuses_is_spooled_and_pushed_once_it_answers(
    tmp_path: Path, publishers: list[Publisher], caplog: pytest.LogCaptureFixture
) -> None:
    server = fakeredis.FakeServer()
    client = fakeredis.FakeRedis(server=server)
    publisher = over(client, make(tmp_path, publishers))
    server.connected = False
    spooled = [record(5), record(6)]
    with caplog.at_level(logging.WARNING, logger=publisher_module.__name__):
        publisher.publish(spooled[0])  # no error: the spool took it
        publisher.publish_many(spooled[1:])
    assert publisher.spool is not None and publisher.spool.has_records()
    # One warning while spooling, not one per record.
    assert len([r for r in caplog.records if "spooling records" in r.getMessage()]) == 1
    server.connected = True
    wait_until(lambda: len(queued(client)) == 2, 30, "the spool drained")
    assert sorted(queued(client)) == sorted(r.message for r in spooled)
    assert not publisher.spool.has_records()


def test_a_record_due_later_is_spooled_with_its_due_time(
    tmp_path: Path, publishers: list[Publisher]
) -> None:
    server = fakeredis.FakeServer()
    client = fakeredis.FakeRedis(server=server)
    publisher = over(client, make(tmp_path, publishers))
    server.connected = False
    due_epoch_s = time.time() + 600
    publisher.publish(record(7), due_epoch_s=due_epoch_s)
    server.connected = True
    wait_until(lambda: client.zcard(KEYS.scheduled) == 1, 30, "the spool drained")
    assert client.zscore(KEYS.scheduled, record(7).message) == pytest.approx(due_epoch_s)
    assert queued(client) == []


def test_a_real_broker_that_refuses_connections_sends_records_to_the_spool(
    tmp_path: Path, publishers: list[Publisher]
) -> None:
    publisher = make(tmp_path, publishers, broker_url=unreachable_url())
    publisher.publish(record(8))
    assert publisher.spool is not None and publisher.spool.has_records()


@pytest.mark.parametrize("many", [False, True], ids=["publish", "publish_many"])
def test_with_the_spool_off_a_refused_record_raises_publish_error_naming_it(
    tmp_path: Path, publishers: list[Publisher], many: bool
) -> None:
    publisher = make(
        tmp_path, publishers, broker_url=unreachable_url("hunter2"), spool_enabled=False
    )
    assert publisher.spool is None
    with pytest.raises(PublishError) as failure:
        if many:
            publisher.publish_many([record(9), record(10)])
        else:
            publisher.publish(record(9))
    message = str(failure.value)
    assert ("2 records (first response_id r9)" if many else "record r9") in message
    assert "AICM_SPOOL_ENABLED=false" in message
    assert isinstance(failure.value.__cause__, redis.RedisError)
    # The broker's URL is named with its password hidden.
    assert "redis://:***@127.0.0.1:" in message
    assert "hunter2" not in message


def test_the_spooling_warning_hides_the_brokers_password(
    tmp_path: Path, publishers: list[Publisher], caplog: pytest.LogCaptureFixture
) -> None:
    publisher = make(tmp_path, publishers, broker_url=unreachable_url("hunter2"))
    with caplog.at_level(logging.WARNING, logger=publisher_module.__name__):
        publisher.publish(record(11))
    assert "redis://:***@127.0.0.1:" in caplog.text
    assert "hunter2" not in caplog.text


# -- leftovers of a process that died -------------------------------------------------------


def test_records_a_dead_process_left_in_the_spool_are_pushed_on_the_first_publish(
    any_redis: redis.Redis, tmp_path: Path, publishers: list[Publisher]
) -> None:
    options = settings(tmp_path)
    left = Spool.for_settings(options)
    left.append_many([record(12).message, record(13).message])
    publisher = over(any_redis, make(tmp_path, publishers))
    publisher.publish(record(14))
    wait_until(lambda: len(queued(any_redis)) == 3, 30, "the leftovers pushed")
    assert sorted(queued(any_redis)) == sorted(record(n).message for n in (12, 13, 14))


def test_the_spool_is_looked_at_once_per_process_not_per_publish(
    tmp_path: Path, publishers: list[Publisher], monkeypatch: pytest.MonkeyPatch
) -> None:
    publisher = over(fakeredis.FakeRedis(), make(tmp_path, publishers))
    assert publisher.spool is not None
    looks: list[int] = []

    def has_records() -> bool:
        looks.append(1)
        return False

    monkeypatch.setattr(publisher.spool, "has_records", has_records)
    for n in range(3):
        publisher.publish(record(n))
    assert len(looks) == 1
    # A forked child is another process: it looks once more.
    monkeypatch.setattr("os.getpid", lambda: -7)
    publisher.publish(record(3))
    publisher.publish(record(4))
    assert len(looks) == 2


def test_a_spool_that_cannot_be_read_never_fails_the_publish(
    tmp_path: Path,
    publishers: list[Publisher],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = fakeredis.FakeRedis()
    publisher = over(client, make(tmp_path, publishers))
    assert publisher.spool is not None

    def unreadable() -> bool:
        raise OSError("disk gone")

    monkeypatch.setattr(publisher.spool, "has_records", unreadable)
    with caplog.at_level(logging.WARNING, logger=publisher_module.__name__):
        publisher.publish(record(15))
    assert queued(client) == [record(15).message]
    assert "cannot be read: disk gone" in caplog.text
