"""The worker bootstep without a Celery worker: its methods called as Celery's
blueprint would, over a stand-in worker (the app, a hostname) and the real Redis.

What is proven: which observers it wires from settings, that the tracking
queue is kept from Celery's consumer, that stop hands the service's work back
and closes what it opened, and that ``build_service`` turns settings into the
service's options (keys by alias, the transport closed at stop).
"""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import pytest
import redis
from kombu import Queue

from aicm_tasks.app import DEFAULT_TASK_QUEUE, create_app
from aicm_tasks.broker.keys import Keys
from aicm_tasks.devtools.processes import free_port
from aicm_tasks.errors import ConfigurationError
from aicm_tasks.settings import Settings
from aicm_tasks.worker import bootstep as bootstep_module
from aicm_tasks.worker.bootstep import SHUTDOWN_GRACE_S, DeliveryStep, active_queues, build_service
from aicm_tasks.worker.events import TaskEvents
from aicm_tasks.worker.metrics import Metrics
from aicm_tasks.worker.observe import Observer, RedisFigures
from aicm_tasks.worker.service import DeliveryService
from tests.conftest import TEST_REDIS_URL

QUEUE, PREFIX = "test.bootstep", "testboot"


def settings(**options: Any) -> Settings:
    values: dict[str, Any] = {
        "broker_url": TEST_REDIS_URL,
        "queue": QUEUE,
        "key_prefix": PREFIX,
        "api_key": "sk-boot-default",
        "api_base": "http://127.0.0.1:9",  # never reached: no record is published
        "events_enabled": False,
    }
    values.update(options)
    return Settings(**values)


def worker_for(options: Settings) -> Any:
    """What the step reads of Celery's worker: its app and its hostname."""
    return SimpleNamespace(app=create_app(options), hostname="worker1@test")


class FakeService:
    """Stands in for DeliveryService: remembers how it was built, started, stopped."""

    def __init__(self, observers: list[Observer], name: str = "") -> None:
        self.observers = observers
        self.name = name
        self.calls: list[tuple[str, float | None]] = []

    def start(self) -> None:
        self.calls.append(("start", None))

    def stop(self, timeout_s: float) -> None:
        self.calls.append(("stop", timeout_s))


@pytest.fixture
def built(monkeypatch: pytest.MonkeyPatch) -> list[FakeService]:
    made: list[FakeService] = []

    def fake_build(
        options: Settings,
        *,
        extra_observers: list[Observer] = (),  # type: ignore[assignment]
        name: str = "",
    ) -> FakeService:
        made.append(FakeService(list(extra_observers), name))
        return made[-1]

    monkeypatch.setattr(bootstep_module, "build_service", fake_build)
    return made


# -- wiring ------------------------------------------------------------------------------


def test_start_builds_and_starts_the_service_and_stop_stops_it_with_the_grace(
    built: list[FakeService],
) -> None:
    worker = worker_for(settings())
    step = DeliveryStep(worker)
    step.start(worker)
    (service,) = built
    assert service.observers == []  # events and metrics off
    step.stop(worker)
    assert service.calls == [("start", None), ("stop", SHUTDOWN_GRACE_S)]
    assert step.service is None
    step.shutdown(worker)  # Celery may call both: the second does nothing
    assert service.calls[-1] == ("stop", SHUTDOWN_GRACE_S) and len(service.calls) == 2


def test_events_are_wired_with_the_workers_hostname_and_closed_at_stop(
    built: list[FakeService], monkeypatch: pytest.MonkeyPatch
) -> None:
    closed: list[TaskEvents] = []
    monkeypatch.setattr(TaskEvents, "close", lambda self: closed.append(self))
    worker = worker_for(settings(events_enabled=True, events_show_payloads=True))
    step = DeliveryStep(worker)
    step.start(worker)
    (events,) = built[0].observers
    assert isinstance(events, TaskEvents)
    assert events.hostname == "worker1@test"
    # The delivery service is named as Flower names the worker, for status.
    assert built[0].name == "worker1@test"
    assert events.show_payloads is True
    assert events.queue == QUEUE
    assert events.app is worker.app
    step.stop(worker)
    assert closed == [events]
    assert step.events is None


def test_metrics_are_served_on_the_configured_port_when_set(
    built: list[FakeService], monkeypatch: pytest.MonkeyPatch
) -> None:
    served: list[int] = []
    monkeypatch.setattr(Metrics, "serve", lambda self, port, addr="0.0.0.0": served.append(port))
    port = free_port()
    worker = worker_for(settings(metrics_port=port))
    DeliveryStep(worker).start(worker)
    (metrics,) = built[0].observers
    assert isinstance(metrics, Metrics)
    assert served == [port]
    assert metrics.queue == QUEUE  # celery_queue_length{queue_name} names the configured queue


def test_the_tracking_queue_is_taken_from_celerys_consumer_when_named_with_q() -> None:
    options = settings()
    worker = worker_for(options)
    queues = worker.app.amqp.queues
    assert QUEUE not in queues  # kept out of app.amqp.queues (celery purge)
    queues.select_add(Queue(QUEUE))  # what `worker -Q test.bootstep` does
    assert QUEUE in queues.consume_from
    DeliveryStep(worker)
    assert QUEUE not in queues.consume_from


def test_httpx_request_logs_are_quieted_unless_configured(
    built: list[FakeService], monkeypatch: pytest.MonkeyPatch
) -> None:
    httpx_logger = logging.getLogger("httpx")
    monkeypatch.setattr(httpx_logger, "level", logging.NOTSET)
    worker = worker_for(settings())
    DeliveryStep(worker).start(worker)
    assert httpx_logger.level == logging.WARNING
    httpx_logger.setLevel(logging.DEBUG)
    DeliveryStep(worker).start(worker)
    assert httpx_logger.level == logging.DEBUG


def test_the_real_service_takes_a_lease_at_start_and_drops_it_at_stop(
    real_redis: redis.Redis,
) -> None:
    worker = worker_for(settings())
    step = DeliveryStep(worker)
    keys = Keys(QUEUE, PREFIX)
    step.start(worker)
    try:
        assert step.service is not None
        consumer = step.service.consumer
        assert real_redis.zscore(keys.consumers, consumer) is not None
    finally:
        step.stop(worker)
    assert real_redis.zscore(keys.consumers, consumer) is None


# -- build_service ----------------------------------------------------------------------------


def test_a_worker_without_any_key_refuses_to_start() -> None:
    with pytest.raises(ConfigurationError, match="AICM_API_KEY is not set"):
        build_service(settings(api_key=None))


def test_the_service_is_built_from_settings() -> None:
    options = settings(
        api_keys={"team-a": "sk-a", "team-b": "sk-b"},
        batch_size=123,
        flush_interval_s=0.5,
        delivery_concurrency=3,
        max_retries=7,
        retry_base_s=2,
        retry_max_s=20,
        auth_retry_interval_s=11,
        redelivery_timeout_s=33,
    )
    extra = Observer()
    service = build_service(options, extra_observers=[extra])
    assert isinstance(service, DeliveryService)
    assert (service.batch_size, service.flush_interval_s, service.concurrency) == (123, 0.5, 3)
    assert (service.policy.base_s, service.policy.max_s, service.policy.max_retries) == (2, 20, 7)
    assert (service.auth_retry_interval_s, service.lease_s) == (11, 33)
    assert service.store.keys == Keys(QUEUE, PREFIX)
    assert sorted(service.aliases) == ["team-a", "team-b"]
    assert service.post is not None
    first, second = service.observers.observers
    assert isinstance(first, RedisFigures) and second is extra
    # The transport is closed when the service stops, and nothing else is.
    (close,) = service.on_stopped
    assert close.__self__.__class__.__name__ == "TrackTransport"  # type: ignore[attr-defined]
    assert close.__self__.url == "http://127.0.0.1:9/api/v1/track"  # type: ignore[attr-defined]


def test_a_worker_with_only_aliased_keys_has_no_default_post() -> None:
    service = build_service(settings(api_key=None, api_keys={"team-a": "sk-a"}))
    assert service.post is None
    assert list(service.aliases) == ["team-a"]


def test_overrides_replace_what_settings_give() -> None:
    service = build_service(settings(), batch_size=2, concurrency=1)
    assert (service.batch_size, service.concurrency) == (2, 1)


# -- inspect active_queues ----------------------------------------------------------------------


def test_active_queues_lists_the_tracking_queue_beside_celerys_own() -> None:
    app = worker_for(settings()).app
    consumed = [app.amqp.queues[DEFAULT_TASK_QUEUE]]
    state = SimpleNamespace(
        consumer=SimpleNamespace(app=app, task_consumer=SimpleNamespace(queues=consumed))
    )
    assert [q["name"] for q in active_queues(state)] == [DEFAULT_TASK_QUEUE, QUEUE]


def test_active_queues_does_not_repeat_the_tracking_queue_when_celery_consumes_it() -> None:
    app = worker_for(settings()).app
    tracking = Queue(QUEUE, routing_key=QUEUE)
    state = SimpleNamespace(
        consumer=SimpleNamespace(app=app, task_consumer=SimpleNamespace(queues=[tracking]))
    )
    assert [q["name"] for q in active_queues(state)] == [QUEUE]
