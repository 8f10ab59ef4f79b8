"""The delivery service's threads over fakeredis and the real Redis, with a fake ``post``.

No HTTP and no Celery: what is proven here is the service's own bookkeeping
(every record delivered once, the stats counted, what it closes at stop).
The same service over a real worker process and server: tests/integration.
"""

from __future__ import annotations

import json
import logging
import threading
from types import SimpleNamespace
from typing import Any, cast

import pytest
import redis

from aicm_tasks.broker.keys import IDLE_AT, LAST_DELIVERED_AT, Keys, dead_lettered_field
from aicm_tasks.broker.messages import decode
from aicm_tasks.broker.records import RecordStore
from aicm_tasks.devtools.processes import wait_until
from aicm_tasks.producer.record import build_record
from aicm_tasks.worker import batches as batches_module
from aicm_tasks.worker import housekeeping as housekeeping_module
from aicm_tasks.worker import service as service_module
from aicm_tasks.worker.housekeeping import CLOCK_SKEW_WARN_EVERY_S, CLOCK_SKEW_WARN_S
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


# -- fencing, housekeeping, errors, stop, clock ------------------------------------------------


def test_a_batch_reclaimed_while_it_fills_is_never_sent(
    any_redis: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    post = FakeTrack()
    # One record, a batch of 50 and a long flush interval: the thread holds the
    # batch and keeps polling for more while the test takes it back.
    delivery = service(any_redis, post, concurrency=1, flush_interval_s=60)
    store = delivery.store
    (sent,) = publish(store, 1)
    caplog.set_level(logging.WARNING, logger=service_module.__name__)
    delivery.start()
    try:
        held = KEYS.held(delivery.consumer)
        wait_until(lambda: any_redis.scard(held) == 1 and any_redis.llen(KEYS.queue) == 0, 30,
                   "the record taken into a filling batch")  # fmt: skip
        # Another worker's reclaim, as after a pause longer than the lease: the
        # lease lapses and the reclaim runs in one transaction, so no renewal
        # of this live worker slips in between.
        # (Its one filling batch, read first: the script is handed every key.)
        batches = sorted(any_redis.smembers(held))
        with any_redis.pipeline(transaction=True) as pipe:
            pipe.zadd(KEYS.consumers, {delivery.consumer: 0})
            store._reclaim(keys=[KEYS.consumers, KEYS.queue, held, *batches],
                           args=[delivery.consumer], client=pipe)  # fmt: skip
            pipe.execute()
        wait_until(lambda: "reclaimed while it filled" in caplog.text, 30, "the fenced batch")
        assert post.received == []  # the fenced batch was not sent
    finally:
        delivery.stop(30)
    # Whatever happened next, the record is delivered at most once and never lost.
    depth = store.depth()
    assert post.received in ([], [sent])
    assert store.stats().get("delivered", 0) + depth["queued"] + depth["held"] == 1
    assert store.stats().get("delivered", 0) == len(post.received)


def test_housekeeping_sweeps_a_batch_key_no_lease_covers_back_for_delivery(
    any_redis: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    post = FakeTrack()
    delivery = service(any_redis, post)
    records = [build_record("openai::gpt-4o-mini", {"input_tokens": n}) for n in range(4)]
    # A batch left by a worker that is gone, listed in no held set.
    stray = KEYS.batch("gone-host:123:abc", 7)
    any_redis.rpush(stray, *[r.message for r in records])
    caplog.set_level(logging.WARNING, logger=service_module.__name__)
    delivery.start()
    try:
        wait_until(lambda: delivery.store.stats().get("delivered", 0) >= 4, 60, "4 delivered")
    finally:
        delivery.stop(30)
    assert sorted(post.received) == sorted(r.response_id for r in records)
    assert any_redis.exists(stray) == 0
    assert "returned 4 records to the queue from batch keys no lease covered" in caplog.text


def test_a_running_service_writes_what_status_judges_by(any_redis: redis.Redis) -> None:
    post = FakeTrack()
    delivery = service(any_redis, post, name="w1@host")
    delivery.start()
    try:
        # Nothing waits: housekeeping notes it (its first round reads the depth).
        wait_until(lambda: IDLE_AT in delivery.store.health(), 30, "idle noted")
        publish(delivery.store, 20)
        wait_until(lambda: delivery.store.stats().get("delivered", 0) >= 20, 60, "20 delivered")
        assert delivery.store.names() == {delivery.consumer: "w1@host"}
        health = delivery.store.health()
        assert LAST_DELIVERED_AT in health and health[LAST_DELIVERED_AT] >= health[IDLE_AT]
        buckets = [any_redis.hgetall(k) for k in any_redis.scan_iter(KEYS.rate_prefix + "*")]
        assert sum(int(b.get(b"delivered", 0)) for b in buckets) == 20
        assert sum(int(b.get(b"requests", 0)) for b in buckets) >= 1
    finally:
        delivery.stop(30)


def test_a_batch_whose_processing_raises_is_retried_with_the_attempt_counted(
    any_redis: redis.Redis, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug in delivery")

    monkeypatch.setattr(batches_module, "attempt", broken)
    post = FakeTrack()
    # A long backoff: the retries stay scheduled while the test looks at them.
    policy = BackoffPolicy(base_s=600, max_s=600, max_retries=3)
    delivery = service(any_redis, post, concurrency=1, policy=policy)
    sent = publish(delivery.store, 3)
    delivery.store.push(b"\xff not a record")
    delivery.start()
    try:
        wait_until(
            lambda: (
                delivery.store.depth()["scheduled"] == 3
                and delivery.store.depth()["dead_letters"] == 1
            ),
            60,
            "3 retries scheduled and 1 dead letter",
        )
    finally:
        delivery.stop(30)
    assert post.received == []
    scheduled = [decode(cast(bytes, m)) for m in any_redis.zrange(KEYS.scheduled, 0, -1)]
    assert sorted(item.response_id for item in scheduled) == sorted(sent)
    assert [item.retries for item in scheduled] == [1, 1, 1]
    stats = delivery.store.stats()
    assert stats["retried"] == 3
    assert stats[dead_lettered_field("malformed")] == 1
    assert "could not process a batch of 4 records" in caplog.text


def test_stop_hands_back_a_batch_still_in_flight_after_the_grace(
    any_redis: redis.Redis,
) -> None:
    gate = threading.Event()
    post = FakeTrack(gate)
    delivery = service(any_redis, post, concurrency=1)
    sent = publish(delivery.store, 5)
    delivery.start()
    try:
        assert post.in_flight.wait(30), "no POST started"
        delivery.stop(0)
        # Handed back at once: the records are queued again, none held, for any
        # worker to deliver; the POST still in flight cannot settle them now.
        assert delivery.store.depth()["queued"] == 5
        assert delivery.store.depth()["held"] == 0
    finally:
        gate.set()
        for thread in delivery._threads:
            thread.join(30)
    assert sorted(post.received) == sorted(sent)  # sent once, in the POST that was cut
    # Fenced: the late answer did not count them delivered; they wait to be sent again.
    assert delivery.store.stats().get("delivered", 0) == 0
    assert delivery.store.depth()["queued"] == 5


def test_a_skewed_host_clock_is_warned_about_once_per_interval(
    any_redis: redis.Redis, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    delivery = service(any_redis, FakeTrack())
    clock = {"wall": 1_000_000.0, "mono": 50.0}
    monkeypatch.setattr(
        housekeeping_module,
        "time",
        SimpleNamespace(time=lambda: clock["wall"], monotonic=lambda: clock["mono"]),
    )
    caplog.set_level(logging.WARNING, logger=housekeeping_module.__name__)
    skew = CLOCK_SKEW_WARN_S + 1
    delivery.housekeeping._check_clock(clock["wall"] - CLOCK_SKEW_WARN_S + 0.5)  # within the margin
    assert caplog.records == []
    for _ in range(3):
        delivery.housekeeping._check_clock(clock["wall"] - skew)
        clock["mono"] += 1
    assert [r.getMessage()[:40] for r in caplog.records] == [
        f"this host's clock is +{skew:.1f}s off the Redis"[:40]
    ]
    clock["mono"] += CLOCK_SKEW_WARN_EVERY_S
    delivery.housekeeping._check_clock(clock["wall"] + skew)  # behind this time
    assert len(caplog.records) == 2
    assert f"-{skew:.1f}s off" in caplog.records[1].getMessage()
