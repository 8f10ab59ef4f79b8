"""The delivery service over several shards, with a fake ``post``: every shard
consumed, a failing shard skipped, and batches a failover left listed as ours
handed back."""

from __future__ import annotations

import threading
from typing import Any

import fakeredis
import pytest
import redis
from prometheus_client import CollectorRegistry

from aicm_tasks.broker.keys import shard_keys
from aicm_tasks.broker.records import RecordStore
from aicm_tasks.broker.redis_settings import BrokerSettings, Finding
from aicm_tasks.devtools.processes import wait_until
from aicm_tasks.worker import housekeeping as housekeeping_module
from aicm_tasks.worker.housekeeping import Housekeeping
from aicm_tasks.worker.metrics import Metrics
from aicm_tasks.worker.observe import Observer, Observers
from aicm_tasks.worker.retry import BackoffPolicy
from aicm_tasks.worker.service import DeliveryService
from tests.unit.worker.test_service import FakeTrack, publish

OPTIONS: dict[str, Any] = {
    "batch_size": 50,
    "flush_interval_s": 0.05,
    "concurrency": 2,
    "policy": BackoffPolicy(base_s=1, max_s=60, max_retries=3),
    "auth_retry_interval_s": 60,
    "redelivery_timeout_s": 30,
}


def shards(client: redis.Redis, n: int) -> list[RecordStore]:
    return [RecordStore(client, shard_keys("q", "p", i, tagged=True)) for i in range(n)]


def test_every_shard_is_consumed_and_each_record_delivered_once(any_redis: redis.Redis) -> None:
    stores = shards(any_redis, 3)
    post = FakeTrack()
    delivery = DeliveryService(stores, post, **OPTIONS)
    sent = [rid for n, store in enumerate(stores) for rid in publish(store, 40 * (n + 1))]
    delivery.start()
    try:
        wait_until(lambda: len(post.received) >= 240, 60, "240 delivered")
    finally:
        delivery.stop(30)
    assert sorted(post.received) == sorted(sent)
    assert [s.stats()["delivered"] for s in stores] == [40, 80, 120]
    assert all(s.depth()["held"] == 0 and s.depth()["queued"] == 0 for s in stores)
    # A lease in every shard while it ran, dropped from each at stop.
    assert all(s.depth()["workers"] == 0 for s in stores)


class DownStore(RecordStore):
    """A shard whose Redis refuses every call."""

    def fetch(self, *args: Any, **kwargs: Any) -> list[bytes] | None:
        raise redis.ConnectionError("shard down")

    def renew_lease(self, consumer: str, lease_s: float, name: str = "") -> float:
        raise redis.ConnectionError("shard down")


def test_a_shard_that_fails_is_skipped_while_the_others_are_delivered() -> None:
    client = fakeredis.FakeRedis()
    live = shards(client, 2)
    down = DownStore(client, shard_keys("q", "p", 2, tagged=True))
    post = FakeTrack()
    delivery = DeliveryService([*live, down], post, **OPTIONS)
    sent = publish(live[0], 30) + publish(live[1], 30)
    delivery.start()
    try:
        wait_until(lambda: len(post.received) >= 60, 60, "60 delivered from the live shards")
    finally:
        delivery.stop(5)
    assert sorted(post.received) == sorted(sent)


def test_a_batch_listed_as_ours_that_no_thread_holds_is_handed_back(
    any_redis: redis.Redis,
) -> None:
    """As after a failover that lost a settle: the promoted replica still lists
    the batch in our held set, under the lease we keep renewing."""
    (store,) = shards(any_redis, 1)
    post = FakeTrack()
    delivery = DeliveryService([store], post, **OPTIONS)
    ids = publish(store, 5)
    stale = store.keys.batch(delivery.consumer, 10_000)
    assert store.fetch(delivery.consumer, stale, 5, lease_s=30)
    assert delivery.held.release_strays(store) == 5
    assert store.depth()["queued"] == 5 and store.depth()["held"] == 0
    delivery.start()
    try:
        wait_until(lambda: len(post.received) >= 5, 60, "the returned records delivered")
    finally:
        delivery.stop(30)
    assert sorted(post.received) == sorted(ids)


class WatchedStore(RecordStore):
    """A shard that notes, each time a thread waits on it, what the shards queue."""

    def __init__(self, *args: Any, waits: list[int], siblings: list[RecordStore]) -> None:
        super().__init__(*args)
        self.waits, self.siblings = waits, siblings

    def wait_one(self, batch_key: str, timeout_s: float) -> bytes | None:
        self.waits.append(sum(int(s.client.llen(s.keys.queue)) for s in self.siblings))
        return super().wait_one(batch_key, timeout_s)


def test_no_thread_waits_on_an_empty_shard_while_another_holds_records(
    any_redis: redis.Redis,
) -> None:
    """A thread waiting on an empty shard holds the gather lock: every other
    thread would wait with it while another shard's backlog stands still."""
    waits: list[int] = []
    stores: list[RecordStore] = []
    stores += [
        WatchedStore(any_redis, shard_keys("q", "p", i, tagged=True), waits=waits, siblings=stores)
        for i in range(3)
    ]
    post = FakeTrack()
    sent = publish(stores[2], 400)
    delivery = DeliveryService(stores, post, **OPTIONS)
    delivery.start()
    try:
        wait_until(lambda: len(post.received) >= 400, 60, "400 delivered from one shard")
    finally:
        delivery.stop(30)
    assert sorted(post.received) == sorted(sent)
    assert stores[2].stats()["delivered"] == 400
    assert waits == [0] * len(waits)


def test_a_batch_filling_from_a_trickle_on_one_shard_does_not_hold_up_another(
    any_redis: redis.Redis,
) -> None:
    """One record on shard 0 fills its batch for the whole flush interval; a
    full batch on shard 1 meanwhile is delivered at once, not after it."""
    stores = shards(any_redis, 2)
    post = FakeTrack()
    delivery = DeliveryService(stores, post, **{**OPTIONS, "flush_interval_s": 120})
    trickle = publish(stores[0], 1)
    delivery.start()
    try:
        wait_until(lambda: stores[0].depth()["held"] == 1, 30, "shard 0's batch filling")
        full = publish(stores[1], OPTIONS["batch_size"])
        wait_until(lambda: len(post.received) >= len(full), 60, "shard 1's batch delivered")
        # Shard 0's batch still fills (for 120 s): only shard 1's records went.
        assert sorted(post.received) == sorted(full)
    finally:
        delivery.stop(30)
    # Stopping ends the fill: shard 0's record is delivered too.
    assert sorted(post.received) == sorted(full + trickle)


@pytest.mark.parametrize("count", [1, 3])
def test_a_batch_a_thread_holds_is_never_taken_for_a_stray(count: int) -> None:
    stores = shards(fakeredis.FakeRedis(), count)
    delivery = DeliveryService(stores, FakeTrack(), **OPTIONS)
    store = stores[-1]
    publish(store, 3)
    batch = store.keys.batch(delivery.consumer, 0)
    delivery.held.add(batch, store)  # a delivery thread's, filling
    store.fetch(delivery.consumer, batch, 3, lease_s=30)
    assert delivery.held.release_strays(store) == 0
    assert store.depth()["held"] == 3


def housekeep_until(stores, metrics: Metrics, done, what: str) -> None:
    """Run a worker's housekeeping over ``stores`` in its thread until ``done()``."""
    housekeeping = Housekeeping(
        stores, "c", lease_s=30, observers=Observers([metrics]), settings_check_interval_s=1e9
    )
    stop = threading.Event()
    thread = threading.Thread(target=housekeeping.run, args=(stop,), daemon=True)
    thread.start()
    try:
        wait_until(done, 30, what)
    finally:
        stop.set()
        thread.join(10)


def test_housekeeping_reports_each_shards_depth_and_their_sum() -> None:
    stores = shards(fakeredis.FakeRedis(), 3)
    for n, store in enumerate(stores):
        store.push_many([b"x"] * (n + 1))
    metrics = Metrics(CollectorRegistry())
    housekeep_until(
        stores,
        metrics,
        lambda: metrics.registry.get_sample_value("aicm_records", {"state": "queued"}) == 6,
        "the summed depth",
    )
    for n in range(3):
        labels = {"shard": str(n), "state": "queued"}
        assert metrics.registry.get_sample_value("aicm_shard_records", labels) == n + 1
    # The worker holds a lease in every shard: one worker, not three.
    assert metrics.registry.get_sample_value("aicm_workers_with_lease") == 1


class FindingsSeen(Observer):
    def __init__(self) -> None:
        self.messages: list[str] = []

    def redis_settings_read(
        self, settings: BrokerSettings, findings: list[Finding], shard: int = 0
    ) -> None:
        self.messages += [f.message for f in findings if f.level == "error"]


def test_each_shards_settings_findings_name_their_shard(monkeypatch: pytest.MonkeyPatch) -> None:
    stores = shards(fakeredis.FakeRedis(), 2)
    evicting = BrokerSettings("allkeys-lru", True, "", "CONFIG")
    monkeypatch.setattr(housekeeping_module, "read_settings", lambda *a, **k: evicting)
    seen = FindingsSeen()
    housekeeping = Housekeeping(
        stores, "c", lease_s=30, observers=Observers([seen]), settings_check_interval_s=60
    )
    for store in stores:
        housekeeping.check_redis_settings(store)
    # What Flower's failed check_broker task carries: each shard's own finding, named.
    assert [m.split(":")[0] for m in seen.messages] == ["shard 0", "shard 1"]
    assert all("allkeys-lru" in m for m in seen.messages)


def test_housekeeping_notes_idle_only_on_the_shards_where_nothing_waits() -> None:
    stores = shards(fakeredis.FakeRedis(), 2)
    stores[1].push_many([b"x"])
    housekeeping = Housekeeping(
        stores, "c", name="w1@host", lease_s=30, observers=Observers([]),
        settings_check_interval_s=1e9,
    )  # fmt: skip
    for store in stores:
        housekeeping._round(store, 1, check_settings=False)
    assert "idle_at" in stores[0].health()
    assert "idle_at" not in stores[1].health()
    # The lease in every shard carries the worker's name (status lists it once).
    assert [store.names() for store in stores] == [{"c": "w1@host"}] * 2


def test_housekeeping_tells_which_shard_did_not_answer() -> None:
    client = fakeredis.FakeRedis()
    stores = shards(client, 3)
    stores[1] = DownStore(client, stores[1].keys)
    metrics = Metrics(CollectorRegistry())

    def up() -> list[float | None]:
        return [
            metrics.registry.get_sample_value("aicm_shard_up", {"shard": str(n)}) for n in range(3)
        ]

    housekeep_until(
        stores, metrics, lambda: up() == [1, 0, 1], "shard 1 reported down, the others up"
    )
