"""The pipeline on RabbitMQ: real workers (``celery -A aicm_tasks worker``), the
local /track server, a queue of each test's own in the session vhost, exact
accounting (published = delivered + dead-lettered, 0 lost)."""

from __future__ import annotations

import pytest

from tests.support.pipeline import local_server
from tests.support.rabbitmq_pipeline import (
    RabbitPipeline,
    rabbit_pipeline,
    rabbit_pipeline_factory,
    record_messages,
)

__all__ = ["local_server", "rabbit_pipeline", "rabbit_pipeline_factory"]

pytestmark = pytest.mark.integration


def test_records_published_to_rabbitmq_are_all_delivered_once_in_batches_of_many(
    rabbit_pipeline: RabbitPipeline,
) -> None:
    pipeline = rabbit_pipeline
    messages = record_messages(3000)
    pipeline.publish(messages)
    pipeline.start_worker(AICM_BATCH_SIZE="200")
    pipeline.wait_delivered(3000)
    pipeline.wait_drained()
    result = pipeline.account("pipeline", set(messages))
    assert (result.delivered, result.dead_lettered, result.lost) == (3000, 0, 0), pipeline.logs()
    assert result.duplicates == 0
    figures = pipeline.figures()
    assert sum(f["stats"].get("delivered", 0) for f in figures) == 3000
    # Batches of many: a 3,000-record backlog takes far fewer settles than records.
    assert len(figures) <= 3000 // 50, len(figures)
    assert pipeline.counts() == (0, 2)  # two delivery threads, each one consumer
