"""The delivery service's threads over fakeredis and the real Redis, with a fake ``post``.

No HTTP and no Celery: what is proven here is the service's own bookkeeping
(every record delivered once, the stats counted, what it closes at stop).
The same service over a real worker process and server: tests/integration.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import redis

from aicm_tasks.broker.keys import Keys
from aicm_tasks.broker.records import RecordStore
from aicm_tasks.devtools.processes import wait_until
from aicm_tasks.producer.record import build_record
from aicm_tasks.worker.outcomes import BatchVerdict, RecordResult, VerdictKind
from aicm_tasks.worker.retry import BackoffPolicy
from aicm_tasks.worker.service import DeliveryService

KEYS = Keys(queue="test.tracking", prefix="test")


class FakeTrack:
    """A ``post`` that answers ``completed`` for every record and remembers them.

    ``gate``: when given, each POST waits for it first (a request in flight).
    """

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.gate = gate
        self.in_flight = threading.Event()
        self.received: list[str] = []
        self._lock = threading.Lock()

    def __call__(self, body: bytes) -> BatchVerdict:
        self.in_flight.set()
        if self.gate is not None:
            self.gate.wait()
        ids = [record["response_id"] for record in json.loads(body)["tracked"]]
        with self._lock:
            self.received.extend(ids)
        return BatchVerdict(
            VerdictKind.RESULTS, "200", 200, results={i: RecordResult("completed") for i in ids}
        )


def service(client: redis.Redis, post: FakeTrack, **options: object) -> DeliveryService:
    settings: dict[str, Any] = {
        "batch_size": 50,
        "flush_interval_s": 0.05,
        "concurrency": 2,
        "policy": BackoffPolicy(base_s=1, max_s=60, max_retries=3),
        "auth_retry_interval_s": 60,
        "redelivery_timeout_s": 30,
    }
    settings.update(options)
    return DeliveryService(RecordStore(client, KEYS), post, **settings)


def publish(store: RecordStore, count: int) -> list[str]:
    records = [build_record("openai::gpt-4o-mini", {"input_tokens": n}) for n in range(count)]
    store.push_many([r.message for r in records])
    return [r.response_id for r in records]


def test_every_record_is_delivered_once_and_counted(any_redis: redis.Redis) -> None:
    post = FakeTrack()
    delivery = service(any_redis, post)
    sent = publish(delivery.store, 230)
    delivery.start()
    try:
        wait_until(lambda: delivery.store.stats().get("delivered", 0) >= 230, 60, "230 delivered")
    finally:
        delivery.stop(30)
    assert sorted(post.received) == sorted(sent)
    assert delivery.store.stats()["delivered"] == 230
    assert delivery.store.depth()["queued"] == 0
    assert delivery.store.depth()["held"] == 0


def test_what_it_closes_at_stop_is_closed_once_every_thread_has_stopped(
    any_redis: redis.Redis,
) -> None:
    closed: list[str] = []
    delivery = service(any_redis, FakeTrack(), on_stopped=[lambda: closed.append("transport")])
    delivery.start()
    delivery.stop(30)
    assert closed == ["transport"]


def test_nothing_is_closed_under_a_request_still_in_flight_after_the_grace(
    any_redis: redis.Redis,
) -> None:
    gate = threading.Event()
    post = FakeTrack(gate)
    closed: list[str] = []
    delivery = service(
        any_redis, post, concurrency=1, on_stopped=[lambda: closed.append("transport")]
    )
    publish(delivery.store, 3)
    delivery.start()
    try:
        assert post.in_flight.wait(30), "no POST started"
        # The POST waits on the gate, so the delivery thread is alive when the
        # grace (0 s) ends: closing the transport now would cut that request.
        delivery.stop(0)
        assert closed == []
    finally:
        gate.set()
        for thread in delivery._threads:
            thread.join(30)
