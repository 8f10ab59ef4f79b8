"""docs/examples/celery_llm.py: the user's own Celery worker runs a task that
calls an LLM and tracks it; the aicm-tasks worker, on the same Redis, delivers
the record and leaves the user's tasks to the user's worker."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import TEST_REDIS_URL
from tests.support.examples import EXAMPLES, SERVICE_KEY, USAGE, Example

pytestmark = pytest.mark.integration

#: What the user's web app does: queue the task, as in the example's docstring.
SEND = """
from celery_llm import summarize
for n in range(3):
    summarize.delay(f"text {n}", customer=f"cust{n}")
"""


def test_a_task_of_the_users_app_tracks_its_llm_call_from_inside_the_worker(
    example: Example,
) -> None:
    # The aicm-tasks worker and the user's app share one Redis database, and the
    # user's tasks use Celery's default queue.
    pipeline, llm_stub = example.pipeline, example.llm
    env = example.env(CELERY_BROKER_URL=TEST_REDIS_URL)
    worker = [
        "-m", "celery", "-A", "celery_llm", "worker",
        "--concurrency=1", "--loglevel=INFO", "-n", "users-worker@%h",
    ]  # fmt: skip
    log_path = example.log("users-worker.log")
    with example.run(worker, log_name="users-worker.log", env=env):
        sent = subprocess.run(
            [sys.executable, "-c", SEND], cwd=EXAMPLES, env=env, capture_output=True, text=True
        )
        assert sent.returncode == 0, sent.stderr[-4000:]
        pipeline.wait_settled(3, timeout_s=90)

    assert len(llm_stub.response_ids) == 3, log_path.read_text()[-4000:]
    events = example.events(llm_stub.response_ids)
    assert sorted(e["customer_key"] for e in events.values()) == ["cust0", "cust1", "cust2"]
    for response_id, request in llm_stub.calls:
        event = events[response_id]
        assert event["service_key"] == SERVICE_KEY
        assert event["payload"] == USAGE
        assert event["context"]["task"] == "summarize" and event["context"]["task_id"]
        n = event["customer_key"].removeprefix("cust")
        assert request["messages"][0]["content"] == f"Summarize: text {n}"
    # Every task ran in the user's worker; the aicm-tasks worker took none of them.
    assert "unregistered task" not in pipeline.logs()
    assert log_path.read_text().count("succeeded in") == 3
