"""The Celery app lives beside a user's own Celery app without taking its tasks."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from celery import Celery, shared_task

# Private to Celery, so celery-types leaves it out; the test restores the current app with it.
from celery._state import _set_current_app, get_current_app  # type: ignore[attr-defined]

from aicm_tasks import create_app
from aicm_tasks.broker.rabbitmq.names import RabbitNames
from aicm_tasks.settings import Settings


@pytest.fixture
def users_app() -> Iterator[Celery]:
    """A Celery app of the user's, current as a Django + Celery project makes it."""
    before = get_current_app()
    app = Celery("users_project", broker="redis://127.0.0.1:1/0", set_as_current=True)
    yield app
    _set_current_app(before)


def test_creating_the_app_leaves_the_users_current_app_and_shared_tasks_alone(
    users_app: Celery,
) -> None:
    @shared_task(name="users_project.summarize")
    def summarize(text: str) -> str:
        return text

    create_app(Settings(broker_url="redis://127.0.0.1:2/0"))

    assert get_current_app() is users_app
    # A @shared_task resolves through the current app: it must still publish to
    # the user's broker, not to ours.
    assert summarize.app is users_app
    assert summarize.app.conf.broker_url == "redis://127.0.0.1:1/0"


def test_the_worker_does_not_consume_celerys_default_queue() -> None:
    app = create_app(Settings(broker_url="redis://127.0.0.1:2/0"))

    assert "celery" not in app.amqp.queues
    assert app.conf.task_default_queue != "celery"


def test_the_tracking_queue_is_declared_but_out_of_reach_of_celery_purge() -> None:
    app = create_app(Settings(broker_url="redis://127.0.0.1:2/0"))
    tracking = app.aicm_settings.queue

    assert tracking in {q.name for q in app.conf.task_queues}  # Flower reads this
    # `celery purge` deletes app.amqp.queues; app.control.purge() what is consumed.
    assert tracking not in app.amqp.queues
    assert tracking not in app.amqp.queues.consume_from
    assert "aicm.tasks" in app.amqp.queues


def test_on_rabbitmq_the_app_declares_quorum_queues_with_the_transports_arguments() -> None:
    app = create_app(Settings(broker_url="amqp://guest:guest@127.0.0.1:1/billing"))
    queues = {q.name: q for q in app.conf.task_queues}
    names = RabbitNames(app.aicm_settings.queue, app.aicm_settings.key_prefix)

    # Exactly what declare_topology declares, or a Celery tool's declare gets 406.
    assert queues[names.queue].queue_arguments == names.record_queue_arguments()
    assert queues[names.queue].exchange.name == names.records_exchange
    assert queues[names.queue].exchange.type == "topic"
    assert queues["aicm.tasks"].queue_arguments == {"x-queue-type": "quorum"}
    assert app.conf.task_default_queue_type == "quorum"
    assert app.conf.worker_detect_quorum_queues is True
    # Confirms, and none of the Redis transport's options.
    assert app.conf.broker_transport_options == {"confirm_publish": True, "max_retries": 2}
    assert names.queue not in app.amqp.queues  # still out of reach of `celery purge`


def test_on_redis_the_app_keeps_the_redis_transport_options() -> None:
    app = create_app(Settings(broker_url="redis://127.0.0.1:2/0"))

    assert "visibility_timeout" in app.conf.broker_transport_options
    assert "confirm_publish" not in app.conf.broker_transport_options
    assert all(not q.queue_arguments for q in app.conf.task_queues)
