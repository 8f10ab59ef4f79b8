"""CeleryDelivery against a real Redis: what enqueue publishes and returns."""

from __future__ import annotations

import json

import pytest
import redis

from aicm_tasks import CeleryDelivery, create_app
from aicm_tasks.errors import RecordTypeError, RecordValueError
from aicm_tasks.settings import Settings
from tests.conftest import TEST_REDIS_URL
from tests.support.tasks import track_of


@pytest.fixture
def delivery(real_redis: redis.Redis) -> CeleryDelivery:
    return CeleryDelivery(task=track_of(create_app(Settings(broker_url=TEST_REDIS_URL))))


def queued(client: redis.Redis) -> list[dict]:
    """The records queued, oldest first (a backfill's message carries its enqueue
    time in a metadata line before the record: see broker/messages.py)."""
    messages: list[bytes] = client.lrange("aicm.tracking", 0, -1)  # type: ignore[assignment]
    return [json.loads(m.rpartition(b"\n")[2]) for m in reversed(messages)]


def sdk_record(**changes: object) -> dict:
    return {
        "service_key": "openai::gpt-4o-mini",
        "response_id": "r1",
        "timestamp": "1700000000.25",
        "payload": {"input_tokens": 1},
        **changes,
    }


def test_enqueue_publishes_the_record_as_the_sdk_built_it(delivery, real_redis) -> None:
    result = delivery.enqueue(sdk_record(customer_key="c", context={"k": "v"}))
    assert result == {
        "queued": 1,
        "response_id": "r1",
        "result": {"response_id": "r1", "status": "queued"},
    }
    (record,) = queued(real_redis)
    assert record == {
        "service_key": "openai::gpt-4o-mini",
        "response_id": "r1",
        "timestamp": "1700000000.25",
        "payload": {"input_tokens": 1},
        "customer_key": "c",
        "context": {"k": "v"},
    }


def test_deliver_publishes_a_whole_body(delivery, real_redis) -> None:
    delivery.deliver({"tracked": [sdk_record(response_id=f"r{n}") for n in range(3)]})
    assert [r["response_id"] for r in queued(real_redis)] == ["r0", "r1", "r2"]


def test_what_is_not_a_record_raises_at_the_call_site(delivery, real_redis) -> None:
    with pytest.raises(RecordTypeError, match="api_key"):
        delivery.enqueue(sdk_record(api_key="sk-x"))
    with pytest.raises(RecordValueError, match="service_key"):
        delivery.enqueue(sdk_record(service_key="openai_chat"))
    assert queued(real_redis) == []


def test_the_delivery_stays_usable_after_close(delivery, real_redis) -> None:
    with delivery as same:
        same.enqueue(sdk_record(response_id="before"))
    delivery.stop()
    delivery.enqueue(sdk_record(response_id="after"))
    assert [r["response_id"] for r in queued(real_redis)] == ["before", "after"]
    assert not hasattr(delivery, "type")  # so Tracker leaves AICM.INI alone


def test_a_delivery_anonymises_its_fields_before_publishing(real_redis) -> None:
    task = track_of(create_app(Settings(broker_url=TEST_REDIS_URL)))
    delivery = CeleryDelivery(task=task, anonymize_fields=["email"], anonymizer=lambda v: "gone")
    delivery.enqueue(sdk_record(context={"email": "ada@example.com"}))
    (record,) = queued(real_redis)
    assert record["context"] == {"email": "gone"}


def test_a_delivery_naming_fields_without_a_key_fails_at_enqueue(real_redis) -> None:
    from aicm_tasks.errors import ConfigurationError

    task = track_of(create_app(Settings(broker_url=TEST_REDIS_URL)))
    delivery = CeleryDelivery(task=task, anonymize_fields=["email"])
    with pytest.raises(ConfigurationError, match="AICM_ANONYMIZE_KEY"):
        delivery.enqueue(sdk_record(context={"email": "ada@example.com"}))
    assert queued(real_redis) == []


def test_deliver_publishes_every_good_record_of_a_body_before_it_raises_for_a_bad_one(
    delivery, real_redis
) -> None:
    """As ``/track`` takes the good records of a body and refuses the bad one: the
    records after a bad one were never published (spent, never billed)."""
    body = {
        "tracked": [
            sdk_record(response_id="r0"),
            sdk_record(response_id="r1", service_key="openai_chat"),
            sdk_record(response_id="r2"),
        ]
    }
    with pytest.raises(RecordValueError, match=r"tracked\[1\]\.service_key"):
        delivery.deliver(body)
    assert [r["response_id"] for r in queued(real_redis)] == ["r0", "r2"]
