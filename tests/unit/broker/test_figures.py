"""The pipeline's figures and health (broker/figures.py) over fixed data in fakeredis and Redis.

Every figure is read from Redis on the Redis server's clock. The store here
answers ``server_time`` with a fixed instant a day away from this host's clock,
so a figure computed on the host's clock instead comes out wrong.
"""

from __future__ import annotations

import json

import pytest
import redis

from aicm_tasks.broker import figures as figures_module
from aicm_tasks.broker.figures import Figures, Thresholds, judge, read_figures
from aicm_tasks.broker.keys import RATE_BUCKET_S, Keys, dead_lettered_field
from aicm_tasks.broker.records import RecordStore
from aicm_tasks.broker.redis_settings import UNKNOWN, BrokerSettings
from aicm_tasks.producer.record import build_record

KEYS = Keys("test.figures", "testfig")
#: The Redis server's "now" for these tests: a day ahead of any host clock, on
#: a rate-bucket boundary plus 4 s (so the current bucket spans 4 s).
NOW = (int(2_000_000_000 // RATE_BUCKET_S) * RATE_BUCKET_S) + 4.0
SAFE = BrokerSettings("noeviction", True, "3600 1", "CONFIG")


class ServerClockStore(RecordStore):
    """A store whose Redis server clock reads NOW."""

    def server_time(self) -> float:
        return NOW


@pytest.fixture
def store(any_redis: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> RecordStore:
    # The broker's settings as a safe Redis has them, unless a test says otherwise.
    monkeypatch.setattr(figures_module, "read_settings", lambda client, read_by: SAFE)
    return ServerClockStore(any_redis, KEYS)


def seen(store: RecordStore, **ago_s: float) -> None:
    store.client.hset(KEYS.seen, mapping={name: NOW - s for name, s in ago_s.items()})


def fill(store: RecordStore) -> None:
    """Fixed data: 3 queued (oldest tracked 400 s ago), 2 held, 4 scheduled,
    2 dead letters, deliveries in the rate buckets, errors, two workers seen."""
    queued = [
        build_record("openai::gpt-4o", {"input_tokens": n}, timestamp=NOW - 400 + n * 100)
        for n in range(5)
    ]
    store.push_many([r.message for r in queued])  # oldest first (LPUSH: at the tail)
    # A worker holds the two oldest.
    taken = store.fetch("w1", KEYS.batch("w1", 0), 2, 60)
    assert taken is not None and len(taken) == 2
    store.schedule([(NOW + 60 + n, f"later-{n}".encode()) for n in range(4)])
    store.client.zadd(KEYS.dlq_index, {"dead-1": NOW - 5, "dead-2": NOW - 6})
    store.client.hset(
        KEYS.stats,
        mapping={
            "delivered": 900,
            dead_lettered_field("service_key_unknown"): 1,
            dead_lettered_field("error"): 1,
        },
    )
    current = int(NOW // RATE_BUCKET_S)
    store.client.hset(KEYS.rate(current), "delivered", 40)  # the current, partial bucket
    store.client.hset(KEYS.rate(current - 6), "delivered", 20)  # 60 s ago: counted
    store.client.hset(KEYS.rate(current - 7), "delivered", 1000)  # 70 s ago: not counted
    for n in range(12):
        store.client.lpush(KEYS.errors, json.dumps({"at": NOW - n, "detail": f"HTTP 503 #{n}"}))
    seen(store, w1=10, w2=120)


def test_every_figure_is_read_from_fixed_data(store: RecordStore) -> None:
    fill(store)
    figures = read_figures(store)
    assert (figures.queued, figures.held, figures.scheduled, figures.dead_letters) == (3, 2, 4, 2)
    assert figures.dead_letters_by_reason == {"service_key_unknown": 1, "error": 1}
    assert figures.totals["delivered"] == 900
    # Six whole buckets and the current one, over the 64 s they span.
    assert figures.delivered_last_minute == 60
    assert figures.delivered_per_s == round(60 / 64, 1)
    # The oldest record still queued was tracked 200 s ago (the two older are held).
    assert figures.oldest_queued_s == 200.0
    assert [e["detail"] for e in figures.last_errors] == [
        f"HTTP 503 #{n}" for n in range(11, 1, -1)
    ]
    assert figures.workers_alive == ["w1"]
    assert figures.last_worker_seen_s_ago == 10.0
    assert figures.healthy and figures.problems == [] and figures.warnings == []
    shown = figures.as_dict()
    assert shown["healthy"] is True and shown["queued"] == 3
    assert shown["redis_settings"]["maxmemory_policy"] == "noeviction"


def test_an_empty_pipeline_has_no_worker_and_no_ages(store: RecordStore) -> None:
    figures = read_figures(store)
    assert (figures.queued, figures.held, figures.scheduled, figures.dead_letters) == (0, 0, 0, 0)
    assert figures.oldest_queued_s is None
    assert figures.last_worker_seen_s_ago is None
    assert figures.delivered_last_minute == 0
    assert figures.problems == ["no worker alive for 60s (never seen)"]
    assert not figures.healthy


def test_workers_are_alive_by_the_servers_clock_not_this_hosts(store: RecordStore) -> None:
    # Seen 5 s and 59 s ago by the server's clock (a day ahead of this host's):
    # alive. On this host's clock they would be seen a day in the future.
    seen(store, a=5, b=59, c=61)
    figures = read_figures(store)
    assert figures.workers_alive == ["a", "b"]
    assert figures.last_worker_seen_s_ago == 5.0


def test_a_worker_seen_too_long_ago_is_a_problem(store: RecordStore) -> None:
    seen(store, w=300)
    figures = read_figures(store)
    assert figures.workers_alive == []
    assert figures.problems == ["no worker alive for 60s (last seen 300s ago)"]
    assert read_figures(store, Thresholds(no_worker_s=400)).problems == []


def test_the_oldest_queued_record_over_its_threshold_is_a_problem(store: RecordStore) -> None:
    seen(store, w=1)
    store.push(build_record("openai::gpt-4o", {"input_tokens": 1}, timestamp=NOW - 301).message)
    assert read_figures(store).problems == ["oldest queued record is 301s old (threshold 300s)"]
    assert read_figures(store, Thresholds(max_oldest_queued_s=301)).problems == []


def test_dead_letters_over_their_threshold_are_a_problem_only_with_a_threshold(
    store: RecordStore,
) -> None:
    seen(store, w=1)
    store.client.zadd(KEYS.dlq_index, {f"d{n}": NOW for n in range(3)})
    assert read_figures(store).problems == []
    assert read_figures(store, Thresholds(max_dead_letters=3)).problems == []
    assert read_figures(store, Thresholds(max_dead_letters=2)).problems == [
        "3 dead letters (threshold 2)"
    ]


def test_a_queued_message_without_a_readable_timestamp_has_no_age(store: RecordStore) -> None:
    store.push(b"not a record")
    assert read_figures(store).oldest_queued_s is None


@pytest.mark.parametrize(
    ("settings", "problems", "warnings"),
    [
        (SAFE, 0, 0),
        (BrokerSettings("allkeys-lru", True, "", "CONFIG"), 1, 0),
        (BrokerSettings("volatile-lru", True, "", "CONFIG"), 0, 1),
        (BrokerSettings("noeviction", False, "", "CONFIG"), 0, 1),
        (BrokerSettings("allkeys-random", False, "900 1", "CONFIG"), 1, 1),
        (BrokerSettings(None, None, None, UNKNOWN, note="CONFIG refused"), 0, 2),
    ],
    ids=["safe", "allkeys", "volatile", "aof-off", "allkeys-aof-off", "unknown"],
)
def test_the_brokers_settings_give_problems_and_warnings(
    store: RecordStore,
    monkeypatch: pytest.MonkeyPatch,
    settings: BrokerSettings,
    problems: int,
    warnings: int,
) -> None:
    seen(store, w=1)
    monkeypatch.setattr(figures_module, "read_settings", lambda client, read_by: settings)
    figures = read_figures(store)
    assert len(figures.problems) == problems
    assert len(figures.warnings) == warnings
    if problems:
        assert "evicts queued records" in figures.problems[0]
    assert figures.redis_settings == settings.as_hash()


def test_settings_a_worker_stored_are_used_when_this_client_may_not_read_them(
    store: RecordStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen(store, w=1)
    refused = BrokerSettings(None, None, None, UNKNOWN, note="CONFIG refused; INFO refused")
    monkeypatch.setattr(figures_module, "read_settings", lambda client, read_by: refused)
    stored = BrokerSettings("allkeys-lru", True, "", "CONFIG", read_by="w1")
    store.client.hset(KEYS.redis_settings, mapping=dict(stored.as_hash()))  # type: ignore[arg-type]
    figures = read_figures(store)
    assert figures.redis_settings["maxmemory_policy"] == "allkeys-lru"
    assert figures.redis_settings["read_by"] == "w1"
    assert len(figures.problems) == 1 and "allkeys-lru" in figures.problems[0]


def test_without_stored_settings_unknown_ones_are_a_warning_not_a_problem(
    store: RecordStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen(store, w=1)
    refused = BrokerSettings(None, None, None, UNKNOWN, note="CONFIG refused")
    monkeypatch.setattr(figures_module, "read_settings", lambda client, read_by: refused)
    figures = read_figures(store)
    assert figures.healthy
    assert figures.warnings[0].startswith("maxmemory-policy is unknown (CONFIG refused)")


def test_judge_lists_every_threshold_crossed_at_once() -> None:
    figures = Figures(
        queued=1, held=0, scheduled=0, dead_letters=7, dead_letters_by_reason={},
        delivered_last_minute=0, delivered_per_s=0.0, workers_alive=[],
        last_worker_seen_s_ago=None, oldest_queued_s=1000.0, totals={}, last_errors=[],
    )  # fmt: skip
    assert judge(figures, Thresholds(max_dead_letters=5)) == [
        "no worker alive for 60s (never seen)",
        "oldest queued record is 1000s old (threshold 300s)",
        "7 dead letters (threshold 5)",
    ]
