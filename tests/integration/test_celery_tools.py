"""What Celery's own tools see of a running aicm-tasks worker."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from aicm_tasks.app import DEFAULT_TASK_QUEUE
from aicm_tasks.devtools.processes import wait_until
from aicm_tasks.worker.banner import CONSUMED_BY
from tests.support.accounting import account
from tests.support.pipeline import Pipeline

pytestmark = pytest.mark.integration


def test_workers_report_the_tracking_queue_to_inspect_and_in_their_banner(
    pipeline: Pipeline,
) -> None:
    pipeline.start_worker()
    # The delivery step starts before Celery's consumer: wait until it answers.
    replies: dict = {}

    def answered() -> bool:
        replies.update(pipeline.app.control.inspect(timeout=1).active_queues() or {})
        return bool(replies)

    wait_until(answered, 60, "the worker to answer inspect")
    (queues,) = replies.values()
    assert pipeline.settings.queue in {q["name"] for q in queues}
    # `celery worker` prints its banner before it answers: the tracking queue is
    # listed under [queues] as consumed, beside Celery's own task queue.
    (log,) = pipeline.log_dir.glob("*.log")
    banner = log.read_text(errors="replace")
    listed = banner[banner.index("[queues]") :].splitlines()[1:3]
    assert [line.split()[1] for line in listed] == [DEFAULT_TASK_QUEUE, pipeline.settings.queue]
    assert listed[1].endswith(f"key={pipeline.settings.queue} {CONSUMED_BY}")


def test_the_worker_banner_names_the_tracking_queue(pipeline: Pipeline) -> None:
    pipeline.start_worker()
    queue = pipeline.settings.queue
    wait_until(lambda: f".> {queue}" in pipeline.logs(), 60, "the worker's banner")
    [line] = [line for line in pipeline.logs().splitlines() if f".> {queue}" in line]
    assert "read in bulk by the delivery step" in line


def test_the_tracking_queue_is_declared_in_the_app_configuration(pipeline: Pipeline) -> None:
    assert pipeline.settings.queue in {q.name for q in pipeline.app.conf.task_queues}


def test_a_worker_without_an_api_key_stops_with_a_clear_error(pipeline: Pipeline) -> None:
    worker = pipeline.start_worker(wait=False, AICM_API_KEY="")
    assert worker.wait(60) != 0
    assert "AICM_API_KEY is not set" in pipeline.logs()


def _celery_purge(pipeline: Pipeline, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "celery", "-A", "aicm_tasks", "purge", *args],
        env={**os.environ, **pipeline.cli_env()},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_celery_purge_leaves_every_queued_scheduled_and_held_record(pipeline: Pipeline) -> None:
    # Three ordinary Celery tasks in the app's task queue: purge must still delete
    # those, or this test would pass with a purge that does nothing.
    pipeline.client.delete(DEFAULT_TASK_QUEUE)
    for n in range(3):
        pipeline.app.send_task("aicm_tasks.not_a_record", args=[n], queue=DEFAULT_TASK_QUEUE)
    queued = pipeline.track.many(
        [{"service_key": "openai::gpt-4o-mini", "usage": {"input_tokens": n}} for n in range(1000)]
    )
    scheduled = [
        pipeline.track.apply_async(
            ("openai::gpt-4o-mini", {"input_tokens": n}), countdown=1, task_id=f"later-{n}"
        ).id
        for n in range(50)
    ]
    # 100 records held by a worker that has gone (a one-second lease, never renewed).
    holder = "gone-worker:1:abc"
    held = pipeline.store.fetch(holder, pipeline.store.keys.batch(holder, 0), 100, lease_s=1)
    assert held is not None and len(held) == 100
    before = pipeline.store.depth()
    assert (before["queued"], before["scheduled"], before["held"]) == (900, 50, 100)

    purged = _celery_purge(pipeline, "-f")

    assert purged.returncode == 0, purged.stderr
    assert "Purged 3 messages from 1 known task queue" in purged.stdout, purged.stdout
    assert pipeline.settings.queue not in purged.stdout + purged.stderr
    after = pipeline.store.depth()
    assert (after["queued"], after["scheduled"], after["held"]) == (900, 50, 100)
    assert pipeline.client.llen(DEFAULT_TASK_QUEUE) == 0
    # app.control.purge() (Celery's API) spares it too.
    assert pipeline.app.control.purge() == 0
    assert pipeline.store.depth()["queued"] == 900

    # And every one of the 1,050 records is delivered once a worker runs.
    pipeline.start_worker()
    pipeline.wait_drained()
    published = set(queued) | set(scheduled)
    result = account(pipeline, "celery purge -f before delivery", published)
    assert (result.published, result.delivered, result.dead_lettered, result.lost) == (
        1050,
        1050,
        0,
        0,
    )
