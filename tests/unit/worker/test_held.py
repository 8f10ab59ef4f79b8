"""HeldBatches over fakeredis and the real Redis: which batches it hands back.

The race is forced, not hoped for: the Redis read of the held set is where
the housekeeping thread's look-up for strays can be overtaken by a delivery
thread, so the test runs that thread's steps right there.
"""

from __future__ import annotations

import json
import logging
import threading
from typing import Any

import pytest
import redis

from aicm_tasks.broker.keys import Keys
from aicm_tasks.broker.records import RecordStore
from aicm_tasks.devtools.processes import wait_until
from aicm_tasks.producer.record import build_record
from aicm_tasks.worker.held import HeldBatches
from aicm_tasks.worker.outcomes import BatchVerdict, RecordResult, VerdictKind
from aicm_tasks.worker.retry import BackoffPolicy
from aicm_tasks.worker.service import DeliveryService

KEYS = Keys(queue="test.tracking", prefix="test")
CONSUMER = "host:1:abcd"


def publish(store: RecordStore, count: int) -> list[str]:
    records = [build_record("openai::gpt-4o-mini", {"input_tokens": n}) for n in range(count)]
    store.push_many([r.message for r in records])
    return [r.response_id for r in records]


class TurnstileTrack:
    """A ``post`` that answers ``completed`` for every record, each POST waiting
    for a turn the test hands out (``let_through``)."""

    def __init__(self) -> None:
        self.received: list[str] = []
        self.started = 0
        self._turns = threading.Semaphore(0)
        self._lock = threading.Lock()

    def let_through(self, posts: int) -> None:
        for _ in range(posts):
            self._turns.release()

    def __call__(self, body: bytes) -> BatchVerdict:
        with self._lock:
            self.started += 1
        self._turns.acquire()
        ids = [record["response_id"] for record in json.loads(body)["tracked"]]
        with self._lock:
            self.received.extend(ids)
        return BatchVerdict(
            VerdictKind.RESULTS, "200", 200, results={i: RecordResult("completed") for i in ids}
        )


def test_a_batch_a_thread_takes_while_strays_are_looked_up_is_left_to_it(
    any_redis: redis.Redis,
) -> None:
    store = RecordStore(any_redis, KEYS)
    held = HeldBatches(CONSUMER)
    publish(store, 5)
    batch = KEYS.batch(CONSUMER, 0)
    read_held_set = any_redis.smembers

    def a_thread_takes_a_batch_first(name: Any) -> Any:
        # A delivery thread runs between the housekeeping thread's two looks
        # (its own memory, Redis's held set): it registers a batch in memory,
        # then FETCH registers it in Redis, as _deliver_loop does.
        if name == KEYS.held(CONSUMER) and not store.client.exists(batch):
            held.add(batch, store)
            assert store.fetch(CONSUMER, batch, 5, lease_s=30)
        return read_held_set(name)

    any_redis.smembers = a_thread_takes_a_batch_first  # type: ignore[method-assign]
    try:
        returned = held.release_strays(store)
    finally:
        del any_redis.smembers
    # The batch is the thread's: still registered (its fencing token) and full.
    assert returned == 0
    assert any_redis.sismember(KEYS.held(CONSUMER), batch)
    assert any_redis.llen(batch) == 5 and any_redis.llen(KEYS.queue) == 0


def test_a_batch_redis_lists_and_no_thread_holds_goes_back(any_redis: redis.Redis) -> None:
    # A failover promoted a replica that missed the settle: Redis lists a batch
    # the worker forgot. Its live lease would keep it from RECLAIM and SWEEP.
    store = RecordStore(any_redis, KEYS)
    held = HeldBatches(CONSUMER)
    publish(store, 4)
    lost_settle = KEYS.batch(CONSUMER, 7)
    assert store.fetch(CONSUMER, lost_settle, 4, lease_s=30)
    assert held.release_strays(store) == 4
    assert any_redis.llen(KEYS.queue) == 4
    assert not any_redis.sismember(KEYS.held(CONSUMER), lost_settle)


def test_a_full_batch_taken_while_strays_are_looked_up_is_sent_once(
    any_redis: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """The same race in a running service: the housekeeping thread looks for
    strays while a delivery thread takes a full batch from a backlog and posts
    it. Handed back under the thread, the batch would be posted, refused at
    settle (fenced) and posted again by the next batch: every record twice."""
    post = TurnstileTrack()
    delivery = DeliveryService(
        RecordStore(any_redis, KEYS),
        post,
        batch_size=50,
        flush_interval_s=60,
        concurrency=1,
        policy=BackoffPolicy(base_s=1, max_s=60, max_retries=3),
        auth_retry_interval_s=60,
        redelivery_timeout_s=30,
    )
    store = delivery.store
    held_set = KEYS.held(delivery.consumer)
    caplog.set_level(logging.WARNING)
    read_held_set = any_redis.smembers
    sent: list[str] = []
    attacker = threading.Thread(target=lambda: delivery.held.release_strays(store))

    def overtaken(name: Any) -> Any:
        if threading.current_thread() is attacker and name == held_set:
            # The delivery thread waits on an empty queue in its first batch.
            # 100 records: it fills that one (posted, let through, settled),
            # then takes the next 50 at once and posts them.
            sent.extend(publish(store, 100))
            wait_until(lambda: post.started == 1, 30, "the first batch posted")
            post.let_through(1)
            wait_until(lambda: post.started == 2, 30, "the second batch posted")
        return read_held_set(name)

    any_redis.smembers = overtaken  # type: ignore[method-assign]
    delivery.start()
    try:
        wait_until(lambda: any_redis.scard(held_set) == 1, 30, "the first batch registered")
        attacker.start()
        attacker.join(60)
        post.let_through(10)
        wait_until(lambda: store.stats().get("delivered", 0) >= 100, 60, "100 delivered")
    finally:
        post.let_through(10)
        delivery.stop(30)
        del any_redis.smembers
    assert sorted(post.received) == sorted(sent)  # each record posted once
    assert "reclaimed" not in caplog.text and "listed as ours" not in caplog.text
    depth = store.depth()
    assert store.stats()["delivered"] == 100
    assert (depth["queued"], depth["held"]) == (0, 0)
