"""Prometheus metrics: what each observer call adds, read back from a fresh registry."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client import CollectorRegistry

from aicm_tasks.broker.redis_settings import UNKNOWN, BrokerSettings
from aicm_tasks.devtools.processes import free_port
from aicm_tasks.worker.delivery import Summary
from aicm_tasks.worker.metrics import Metrics
from aicm_tasks.worker.observe import BatchReport


@pytest.fixture
def metrics() -> Metrics:
    return Metrics(CollectorRegistry())


def value(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def settled(delivered: int, retried: int, dead: dict[str, int], size: int) -> BatchReport:
    return BatchReport("b", Summary(delivered, retried, dead, 1), 0.1, [object()] * size)  # type: ignore[list-item]


def test_each_settled_batch_adds_its_counts_and_its_size(metrics: Metrics) -> None:
    metrics.batch_settled(settled(7, 2, {"error": 1}, 10))
    metrics.batch_settled(settled(500, 0, {"service_key_unknown": 3, "error": 2}, 505))
    assert value(metrics, "aicm_records_delivered_total") == 507
    assert value(metrics, "aicm_records_retried_total") == 2
    assert value(metrics, "aicm_records_dead_lettered_total", reason="error") == 3
    assert value(metrics, "aicm_records_dead_lettered_total", reason="service_key_unknown") == 3
    assert value(metrics, "aicm_batch_size_records_count") == 2
    assert value(metrics, "aicm_batch_size_records_sum") == 515
    assert value(metrics, "aicm_batch_size_records_bucket", le="10.0") == 1
    assert value(metrics, "aicm_batch_size_records_bucket", le="500.0") == 1
    assert value(metrics, "aicm_batch_size_records_bucket", le="750.0") == 2


def test_each_request_is_counted_by_status_and_timed(metrics: Metrics) -> None:
    metrics.request_done(200, 0.02)
    metrics.request_done(200, 0.2)
    metrics.request_done(503, 1.5)
    metrics.request_done(None, 30.0)
    assert value(metrics, "aicm_track_responses_total", status="200") == 2
    assert value(metrics, "aicm_track_responses_total", status="503") == 1
    assert value(metrics, "aicm_track_responses_total", status="none") == 1
    assert value(metrics, "aicm_track_request_seconds_count") == 4
    assert value(metrics, "aicm_track_request_seconds_sum") == pytest.approx(31.72)
    assert value(metrics, "aicm_track_request_seconds_bucket", le="0.025") == 1
    assert value(metrics, "aicm_track_request_seconds_bucket", le="2.5") == 3


def test_housekeeping_sets_the_depth_gauges_and_missing_states_read_zero(
    metrics: Metrics,
) -> None:
    metrics.housekeeping({"queued": 12, "held": 3, "scheduled": 4, "dead_letters": 1, "workers": 2})
    metrics.housekeeping({"queued": 5, "workers": 1})
    assert value(metrics, "aicm_records", state="queued") == 5
    assert value(metrics, "aicm_records", state="held") == 0
    assert value(metrics, "aicm_records", state="scheduled") == 0
    assert value(metrics, "aicm_records", state="dead_letters") == 0
    assert value(metrics, "aicm_workers_with_lease") == 1


def test_the_queue_depth_is_also_celery_exporters_celery_queue_length() -> None:
    # Name, type and label as danihodovic/celery-exporter exports them, so its
    # dashboards and CeleryHighQueueLength alert read the tracking queue.
    metrics = Metrics(CollectorRegistry(), queue="billing.tracking")
    metrics.housekeeping({"queued": 2028, "held": 500, "scheduled": 7})
    (family,) = [f for f in metrics.registry.collect() if f.name == "celery_queue_length"]
    assert family.type == "gauge"
    assert [(s.name, s.labels, s.value) for s in family.samples] == [
        ("celery_queue_length", {"queue_name": "billing.tracking"}, 2028.0)
    ]
    assert Metrics(CollectorRegistry()).queue == "aicm.tracking"


@pytest.mark.parametrize(
    ("settings", "evicting", "aof", "labels"),
    [
        (BrokerSettings("noeviction", True, "", "CONFIG"), 0, 1, ("noeviction", "yes", "CONFIG")),
        (BrokerSettings("allkeys-lru", False, None, "INFO"), 1, 0, ("allkeys-lru", "no", "INFO")),
        (BrokerSettings(None, None, None, UNKNOWN), -1, -1, ("unknown", "unknown", UNKNOWN)),
    ],
)
def test_the_brokers_settings_are_gauges_and_one_info_series(
    metrics: Metrics,
    settings: BrokerSettings,
    evicting: int,
    aof: int,
    labels: tuple[str, str, str],
) -> None:
    # A previous reading's series must not linger beside the new one.
    metrics.redis_settings_read(BrokerSettings("volatile-lru", True, "", "CONFIG"), [])
    metrics.redis_settings_read(settings, [])
    assert value(metrics, "aicm_broker_evicting") == evicting
    assert value(metrics, "aicm_broker_aof_enabled") == aof
    policy, appendonly, source = labels
    info = [
        sample
        for family in metrics.registry.collect()
        if family.name == "aicm_broker_settings_info"
        for sample in family.samples
    ]
    assert [(s.labels, s.value) for s in info] == [
        ({"maxmemory_policy": policy, "appendonly": appendonly, "source": source}, 1.0)
    ]


def test_two_metrics_objects_with_their_own_registries_do_not_collide() -> None:
    first, second = Metrics(CollectorRegistry()), Metrics(CollectorRegistry())
    first.request_done(200, 0.1)
    assert value(second, "aicm_track_responses_total", status="200") is None


def test_metrics_are_served_on_the_port_in_the_exposition_format(metrics: Metrics) -> None:
    port = free_port()
    metrics.batch_settled(settled(3, 0, {}, 3))
    metrics.serve(port, addr="127.0.0.1")
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    assert "aicm_records_delivered_total 3.0" in text
    assert "# TYPE aicm_records_delivered_total counter" in text
    metrics.housekeeping({"queued": 4})
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    assert "# TYPE celery_queue_length gauge" in text
    assert 'celery_queue_length{queue_name="aicm.tracking"} 4.0' in text


def test_the_broker_gauges_show_the_worst_shard_whichever_was_read_last() -> None:
    metrics = Metrics()
    safe = BrokerSettings("noeviction", True, "", "CONFIG")
    evicting = BrokerSettings("allkeys-lru", True, "", "CONFIG")
    no_aof = BrokerSettings("noeviction", False, "", "CONFIG")
    for shard, settings in enumerate([safe, evicting, no_aof, safe]):
        metrics.redis_settings_read(settings, [], shard)
    value = metrics.registry.get_sample_value
    assert value("aicm_broker_evicting") == 1
    assert value("aicm_broker_aof_enabled") == 0
    assert [value("aicm_shard_broker_evicting", {"shard": str(n)}) for n in range(4)] == [
        0,
        1,
        0,
        0,
    ]
    assert value("aicm_shard_broker_aof_enabled", {"shard": "2"}) == 0
    # One series per distinct reading, the evicting one among them.
    labels = {"maxmemory_policy": "allkeys-lru", "appendonly": "yes", "source": "CONFIG"}
    assert value("aicm_broker_settings_info", labels) == 1


def test_with_one_shard_there_is_no_shard_gauge() -> None:
    metrics = Metrics()
    metrics.redis_settings_read(BrokerSettings("allkeys-lru", True, "", "CONFIG"), [])
    value = metrics.registry.get_sample_value
    assert value("aicm_broker_evicting") == 1
    assert value("aicm_shard_broker_evicting", {"shard": "0"}) is None
