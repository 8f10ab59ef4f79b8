"""The worker's banner lists the tracking queue as consumed, in Celery's format,
while the queue stays out of ``app.amqp.queues`` (what ``celery purge`` deletes).

Celery's own ``startup_info`` runs here on the app's worker class, without
starting a worker: the attributes it reads are set as ``WorkController`` would.
The banner of a real ``celery worker`` is checked in
tests/integration/test_celery_tools.py.
"""

from __future__ import annotations

from typing import Any

import pytest
from kombu import Queue

from aicm_tasks.app import DEFAULT_TASK_QUEUE, create_app
from aicm_tasks.settings import Settings
from aicm_tasks.worker.banner import CONSUMED_BY, TrackingWorker, with_queue_line

QUEUE = "billing.tracking"


def app() -> Any:
    return create_app(Settings(broker_url="redis://127.0.0.1:2/0", queue=QUEUE))


def banner_of(celery_app: Any, *, artlines: bool = True) -> str:
    worker = celery_app.Worker.__new__(celery_app.Worker)  # not started: only its banner
    worker.__dict__.update(
        concurrency=2, autoscale=None, pool_cls="threads", task_events=True, hostname="w1@test"
    )
    text: str = worker.startup_info(artlines=artlines)
    return text


def queue_lines(banner: str) -> list[str]:
    lines = banner.splitlines()
    start = next(n for n, line in enumerate(lines) if line.endswith("[queues]"))
    return [line.strip() for line in lines[start + 1 :] if line.strip()]


@pytest.mark.parametrize("artlines", [True, False])
def test_the_banner_lists_the_tracking_queue_after_celerys_own(artlines: bool) -> None:
    celery_app = app()
    assert issubclass(celery_app.Worker, TrackingWorker)  # what `celery worker` builds
    lines = queue_lines(banner_of(celery_app, artlines=artlines))
    assert lines == [
        f".> {DEFAULT_TASK_QUEUE}       exchange=aicm.tasks(direct) key={DEFAULT_TASK_QUEUE}",
        f".> {QUEUE} exchange=aicm.tasks(direct) key={QUEUE} {CONSUMED_BY}",
    ]
    # Listed, not added: `celery purge` still does not see it.
    assert QUEUE not in celery_app.amqp.queues
    assert QUEUE not in celery_app.amqp.queues.consume_from


def test_named_with_q_the_tracking_queue_is_listed_once() -> None:
    celery_app = app()
    queues = celery_app.amqp.queues
    queues.select_add(Queue(QUEUE))  # `worker -Q billing.tracking`...
    queues.deselect(QUEUE)  # ...then the delivery step takes it from Celery's consumer
    lines = queue_lines(banner_of(celery_app))
    assert [line for line in lines if QUEUE in line] == [
        f".> {QUEUE} exchange=aicm.tasks(direct) key={QUEUE} {CONSUMED_BY}"
    ]


def test_a_line_is_added_under_the_art_or_in_place_of_a_blank_last_line() -> None:
    past_the_art = "\n".join(["x"] * 12) + "\n"  # Celery's banner: 13 lines and more
    assert (
        with_queue_line(past_the_art, ".> t", artlines=True).splitlines()[-1] == " " * 16 + ".> t"
    )
    empty = "[queues]\n\n"  # Celery's consumer reads no queue: its line is blank
    assert with_queue_line(empty, ".> t", artlines=False) == "[queues]\n.> t\n"
    short = "\n".join(["x"] * 3) + "\n"  # still beside the art: the art's next line
    assert with_queue_line(short, ".> t", artlines=True).splitlines()[-1] == "- *** --- * --- .> t"
