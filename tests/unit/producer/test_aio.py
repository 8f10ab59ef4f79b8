"""track_async / track_many_async against a real Redis: validated on the loop,
published off it."""

from __future__ import annotations

import asyncio
import json
import threading

import pytest
import redis

from aicm_tasks import create_app, track_async, track_many_async
from aicm_tasks.errors import RecordTypeError, RecordValueError
from aicm_tasks.settings import Settings
from tests.conftest import TEST_REDIS_URL
from tests.support.tasks import track_of


@pytest.fixture
def track(real_redis: redis.Redis):
    return track_of(create_app(Settings(broker_url=TEST_REDIS_URL)))


def queued(client: redis.Redis) -> list[dict]:
    return [json.loads(m) for m in reversed(client.lrange("aicm.tracking", 0, -1))]


def test_track_async_publishes_the_record_track_delay_would(track, real_redis) -> None:
    response_id = asyncio.run(
        track_async(
            "openai::gpt-4o-mini",
            {"input_tokens": 4},
            customer_key="c",
            context={"a": 1},
            task=track,
        )
    )
    (record,) = queued(real_redis)
    assert record["response_id"] == response_id
    assert (record["service_key"], record["payload"]) == (
        "openai::gpt-4o-mini",
        {"input_tokens": 4},
    )
    assert (record["customer_key"], record["context"]) == ("c", {"a": 1})


def test_the_publish_runs_off_the_event_loop_thread(track, real_redis, monkeypatch) -> None:
    threads: list[int] = []
    publish = track.publisher.publish

    def spy(record, **kwargs) -> None:
        threads.append(threading.get_ident())
        publish(record, **kwargs)

    monkeypatch.setattr(track.publisher, "publish", spy)
    asyncio.run(track_async("a::b", {"n": 1}, task=track))
    assert threads and threads[0] != threading.get_ident()
    assert len(queued(real_redis)) == 1


def test_bad_input_raises_in_the_caller_and_publishes_nothing(track, real_redis) -> None:
    with pytest.raises(RecordValueError, match="service_key"):
        asyncio.run(track_async("no-separator", {"n": 1}, task=track))
    with pytest.raises(RecordTypeError, match=r"records\[1\]\.usage"):
        asyncio.run(
            track_many_async(
                [{"service_key": "a::b", "usage": {}}, {"service_key": "a::b", "usage": 3}],
                task=track,
            )
        )
    assert queued(real_redis) == []


def test_track_many_async_publishes_all_in_order(track, real_redis) -> None:
    ids = asyncio.run(
        track_many_async(
            [{"service_key": "a::b", "usage": {"n": n}, "response_id": f"r{n}"} for n in range(5)],
            task=track,
        )
    )
    assert ids == [f"r{n}" for n in range(5)]
    assert [r["response_id"] for r in queued(real_redis)] == ids
    assert asyncio.run(track_many_async([], task=track)) == []


def test_the_async_forms_take_the_anonymisation_options(track, real_redis) -> None:
    asyncio.run(
        track_async(
            "a::b",
            {"n": 1, "email": "ada@example.com"},
            anonymize_fields=["email"],
            anonymizer=lambda value: "gone",
            task=track,
        )
    )
    asyncio.run(
        track_many_async(
            [{"service_key": "a::b", "usage": {"n": 2, "name": "Ada"}}],
            anonymize_fields=["name"],
            anonymizer=lambda value: "gone",
            task=track,
        )
    )
    assert [r["payload"] for r in queued(real_redis)] == [
        {"n": 1, "email": "gone"},
        {"n": 2, "name": "gone"},
    ]
