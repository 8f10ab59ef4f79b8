"""The RabbitMQ delivery service's wiring and its parked-record planning, off the wire.

Its consume and settle path runs over a real RabbitMQ in
tests/integration/test_rabbitmq_pipeline.py and tests/reliability/test_rabbitmq_faults.py.
"""

from __future__ import annotations

import json

import pytest
from pydantic import SecretStr, ValidationError

from aicm_tasks.broker.messages import malformed_id
from aicm_tasks.broker.rabbitmq.names import RabbitNames
from aicm_tasks.producer.record import build_record
from aicm_tasks.settings import Settings
from aicm_tasks.worker.delivery import plan_parked
from aicm_tasks.worker.rabbitmq_service import RabbitDeliveryService, build_rabbitmq_service

URL = "amqp://guest:guest@127.0.0.1:1/billing"


def test_build_rabbitmq_service_takes_names_and_prefetch_from_settings() -> None:
    service = build_rabbitmq_service(
        Settings(
            broker_url=URL,
            queue="billing.q",
            key_prefix="bill",
            api_key=SecretStr("k"),
            batch_size=300,
        )
    )
    assert isinstance(service, RabbitDeliveryService)
    assert service.names == RabbitNames("billing.q", "bill")
    assert service.prefetch == 600  # two batches ahead
    assert service.url == URL
    assert service.post is not None


def test_a_rabbitmq_worker_cannot_be_configured_to_enforce_limits_it_cannot_keep() -> None:
    with pytest.raises(ValidationError, match="AICM_LIMITS_ENABLED needs Redis"):
        Settings(broker_url=URL, api_key=SecretStr("k"), limits_enabled=True)


def test_parked_records_become_replayable_delivery_limit_dead_letters() -> None:
    record = build_record("openai::gpt-4o-mini", {"input_tokens": 3}, response_id="p1")
    aliased = build_record("openai::x", {"n": 1}, response_id="p2", api_key_alias="team-a")
    unreadable = b"\xff"
    resolution, summary = plan_parked(
        [record.message, aliased.message, unreadable], ["parked 50x", "parked 50x", "parked"], 1.0
    )
    entries = {dead_id: json.loads(entry) for dead_id, entry in resolution.dead_letters}
    assert entries["p1"]["reason"] == "delivery_limit"
    assert entries["p1"]["record"] == record.data
    assert entries["p1"]["detail"] == "parked 50x"
    assert entries["p2"]["api_key_alias"] == "team-a"
    assert entries[malformed_id(unreadable)]["reason"] == "malformed"
    assert resolution.retries == []
    assert summary.dead_lettered == {"delivery_limit": 2, "malformed": 1}
