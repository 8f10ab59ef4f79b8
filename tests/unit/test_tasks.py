"""track.delay / apply_async against a real Redis: one message, or nothing."""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone
from typing import cast

import pytest
import redis

from aicm_tasks import create_app
from aicm_tasks.errors import PublishError, RecordTypeError, RecordValueError
from aicm_tasks.settings import Settings
from tests.conftest import TEST_REDIS_URL
from tests.support.tasks import track_of


@pytest.fixture
def track(real_redis: redis.Redis):
    app = create_app(Settings(broker_url=TEST_REDIS_URL))
    return track_of(app)


def queued(client: redis.Redis) -> list[dict]:
    return [json.loads(m) for m in client.lrange("aicm.tracking", 0, -1)]


def test_delay_publishes_one_record_whose_id_is_the_result_id(
    track, real_redis: redis.Redis
) -> None:
    result = track.delay(
        "openai::gpt-4o-mini", {"input_tokens": 10}, customer_key="c1", context={"env": "prod"}
    )
    (record,) = queued(real_redis)
    assert result.id == record["response_id"]
    assert record["service_key"] == "openai::gpt-4o-mini"
    assert record["payload"] == {"input_tokens": 10}
    assert record["customer_key"] == "c1" and record["context"] == {"env": "prod"}
    assert float(record["timestamp"]) == pytest.approx(time.time(), abs=60)


def test_the_older_three_argument_shape_builds_the_service_key(
    track, real_redis: redis.Redis
) -> None:
    track.delay("openai", "gpt-5-mini", {"input_tokens": 1})
    assert queued(real_redis)[0]["service_key"] == "openai::gpt-5-mini"


def test_apply_async_takes_celerys_options(track, real_redis: redis.Redis) -> None:
    result = track.apply_async(
        ("a::b", {"n": 1}), {"customer_key": "c"}, task_id="given-id", priority=5
    )
    assert result.id == "given-id" and queued(real_redis)[0]["response_id"] == "given-id"
    later = track.apply_async(("a::b", {"n": 2}), countdown=60)
    eta = track.apply_async(("a::b", {"n": 3}), eta=datetime.now(timezone.utc) + timedelta(hours=1))
    # bytes: redis-py types a reply as bytes | str, whatever decode_responses says.
    due = real_redis.zrange("aicm:scheduled", 0, -1, withscores=True)
    scheduled = dict(cast(list[tuple[bytes, float]], due))
    assert {json.loads(m)["response_id"] for m in scheduled} == {later.id, eta.id}
    with pytest.raises(TypeError, match="unknown options: bogus"):
        track.apply_async(("a::b", {}), bogus=1)


@pytest.mark.parametrize(
    ("args", "kwargs", "error"),
    [
        ((None, {}), {}, RecordTypeError),
        (("a::b", [1]), {}, RecordTypeError),
        (("a::b", {}), {"timestamp": "not a time"}, RecordValueError),
        (("a::b", {}), {"context": "x"}, RecordTypeError),
        (("a::b", {"x": float("nan")}), {}, RecordValueError),
        (("a::b", {}), {"colour": "red"}, RecordTypeError),
        (("a::b", {}, 1, 2), {}, RecordTypeError),
    ],
)
def test_bad_input_raises_at_the_call_site_and_publishes_nothing(
    track, real_redis: redis.Redis, args: tuple, kwargs: dict, error: type
) -> None:
    with pytest.raises(error):
        track.delay(*args, **kwargs)
    assert real_redis.llen("aicm.tracking") == 0


def test_an_unreachable_broker_raises_publish_error_naming_the_record() -> None:
    settings = Settings(
        broker_url="redis://:secret@127.0.0.1:1/0", publish_timeout_s=0.5, spool_enabled=False
    )
    app = create_app(settings)
    track = track_of(app)
    with pytest.raises(PublishError, match="record r-9 was not published") as caught:
        track.delay("a::b", {"n": 1}, response_id="r-9")
    assert "secret" not in str(caught.value)


def test_track_many_publishes_every_record_in_one_go(track, real_redis: redis.Redis) -> None:
    ids = track.many(
        [{"service_key": "a::b", "usage": {"n": n}, "customer_key": f"c{n}"} for n in range(1000)]
        + [{"service_key": "a::b", "usage": {}, "response_id": "fixed"}]
    )
    assert len(ids) == 1001 and ids[-1] == "fixed"
    assert {r["response_id"] for r in queued(real_redis)} == set(ids)


def test_track_many_publishes_nothing_when_one_record_is_bad(
    track, real_redis: redis.Redis
) -> None:
    good = {"service_key": "a::b", "usage": {}}
    with pytest.raises(RecordTypeError, match=r"^records\[2\]\.usage"):
        track.many([good, good, {"service_key": "a::b", "usage": "oops"}, good])
    assert real_redis.llen("aicm.tracking") == 0


def test_two_apps_in_one_process_keep_their_own_settings(real_redis: redis.Redis) -> None:
    first = track_of(create_app(Settings(broker_url=TEST_REDIS_URL, queue="first.q")))
    second = track_of(create_app(Settings(broker_url=TEST_REDIS_URL, queue="second.q")))
    first.delay("a::b", {})
    second.delay("a::b", {})
    assert real_redis.llen("first.q") == 1 and real_redis.llen("second.q") == 1
