"""What Celery's own tools see of a running aicm-tasks worker."""

from __future__ import annotations

import pytest

from aicm_tasks.processes import wait_until
from tests.support.pipeline import Pipeline

pytestmark = pytest.mark.integration


def test_workers_report_the_tracking_queue_to_inspect(pipeline: Pipeline) -> None:
    pipeline.start_worker()
    # The delivery step starts before Celery's consumer: wait until it answers.
    replies: dict = {}

    def answered() -> bool:
        replies.update(pipeline.app.control.inspect(timeout=1).active_queues() or {})
        return bool(replies)

    wait_until(answered, 60, "the worker to answer inspect")
    (queues,) = replies.values()
    assert pipeline.settings.queue in {q["name"] for q in queues}


def test_the_tracking_queue_is_declared_in_the_app_configuration(pipeline: Pipeline) -> None:
    assert pipeline.settings.queue in {q.name for q in pipeline.app.conf.task_queues}


def test_a_worker_without_an_api_key_stops_with_a_clear_error(pipeline: Pipeline) -> None:
    worker = pipeline.start_worker(wait=False, AICM_API_KEY="")
    assert worker.wait(60) != 0
    assert "AICM_API_KEY is not set" in pipeline.logs()
