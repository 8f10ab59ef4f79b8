"""The pipeline's figures (broker/figures.py) over fixed data in fakeredis and Redis.

Every figure is read from Redis on the Redis server's clock. The store here
answers ``server_time`` with a fixed instant a day away from this host's clock,
so a figure computed on the host's clock instead comes out wrong.
"""

from __future__ import annotations

import json

import pytest
import redis

from aicm_tasks.broker import figures as figures_module
from aicm_tasks.broker.figures import Thresholds, read_figures
from aicm_tasks.broker.keys import (
    IDLE_AT,
    LAST_DELIVERED_AT,
    LAST_UNAUTHORIZED_AT,
    RATE_BUCKET_S,
    UNAUTHORIZED_SINCE,
    Keys,
    dead_lettered_field,
)
from aicm_tasks.broker.messages import encode
from aicm_tasks.broker.records import RecordStore
from aicm_tasks.broker.redis_settings import UNKNOWN, BrokerSettings
from aicm_tasks.producer.record import build_record

KEYS = Keys("test.figures", "testfig")
#: The Redis server's "now" for these tests: years ahead of any host clock, half
#: a second into a rate bucket (so the current bucket spans 0.5 s).
NOW = (int(2_000_000_000 // RATE_BUCKET_S) * RATE_BUCKET_S) + 0.5
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
    """Fixed data: 3 queued (oldest enqueued 400 s ago), 2 held, 4 scheduled,
    2 dead letters, deliveries in the rate buckets, errors, two workers seen."""
    queued = [
        build_record("openai::gpt-4o", {"input_tokens": n}, timestamp=NOW - 400 + n * 100)
        for n in range(5)
    ]
    # Stamped when they were enqueued on the (fixed) server clock, as a producer
    # whose clock agrees with the server's does.
    messages = [encode(r.body, {"enqueued_at": NOW - 400 + n * 100}) for n, r in enumerate(queued)]
    store.push_many(messages)  # oldest first (LPUSH: at the tail)
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
    store.client.hset(KEYS.rate(current), "delivered", 40)  # the current, partial second
    store.client.hset(KEYS.rate(current - 5), "delivered", 10)  # 5 s ago: in the last 5 s
    store.client.hset(KEYS.rate(current - 6), "delivered", 5)  # 6 s ago: not in them
    store.client.hset(KEYS.rate(current - 60), "delivered", 20)  # 60 s ago: in the minute
    store.client.hset(KEYS.rate(current - 61), "delivered", 1000)  # 61 s ago: not counted
    store.client.hset(KEYS.rate(current - 3), mapping={"requests": 4, "transport_failed": 1})
    store.client.hset(KEYS.rate(current - 200), mapping={"requests": 9, "unauthorized": 9})
    for n in range(12):
        store.client.lpush(KEYS.errors, json.dumps({"at": NOW - n, "detail": f"HTTP 503 #{n}"}))
    seen(store, w1=10, w2=120)
    store.client.hset(KEYS.names, mapping={"w1": "celery@host-a", "w2": "celery@host-b"})
    store.client.hset(KEYS.health, mapping={LAST_DELIVERED_AT: NOW - 2, IDLE_AT: NOW - 30})


def test_every_figure_is_read_from_fixed_data(store: RecordStore) -> None:
    fill(store)
    figures = read_figures(store)
    assert (figures.queued, figures.held, figures.scheduled, figures.dead_letters) == (3, 2, 4, 2)
    assert figures.dead_letters_by_reason == {"service_key_unknown": 1, "error": 1}
    assert figures.totals["delivered"] == 900
    # Sixty whole seconds and the current half one, over the 60.5 s they span.
    assert figures.delivered_last_minute == 75
    assert figures.delivered_per_s == round(75 / 60.5, 1)
    # What flows now: five whole seconds and the current half one.
    assert figures.delivered_last_5s == 50
    assert figures.delivered_per_s_last_5s == round(50 / 5.5, 1)
    # The oldest record still queued was enqueued 200 s ago (the two older are held).
    assert figures.oldest_queued_s == 200.0
    assert [e["detail"] for e in figures.last_errors] == [
        f"HTTP 503 #{n}" for n in range(11, 1, -1)
    ]
    # Named as Flower names them, with the consumer id beside.
    assert figures.workers_alive == ["celery@host-a"]
    assert figures.workers == [
        {"name": "celery@host-a", "consumer": "w1", "seen_s_ago": 10.0, "alive": True},
        {"name": "celery@host-b", "consumer": "w2", "seen_s_ago": 120.0, "alive": False},
    ]
    assert figures.last_worker_seen_s_ago == 10.0
    # Over the default 120 s window: the deliveries and requests in it, not the
    # 401s of 200 s ago.
    assert figures.window_s == 120.0
    assert figures.recent == {
        "delivered": 75 + 1000,
        "retried": 0,
        "dead_lettered": 0,
        "requests": 4,
        "transport_failed": 1,
        "unauthorized": 0,
    }
    assert (figures.last_delivered_s_ago, figures.idle_s_ago) == (2.0, 30.0)
    assert figures.unauthorized_for_s is None and figures.last_unauthorized_s_ago is None
    assert figures.healthy and figures.problems == [] and figures.warnings == []
    shown = figures.as_dict()
    assert shown["healthy"] is True and shown["queued"] == 3 and shown["waiting"] == 9
    assert shown["delivered_last_5s"] == 50 and shown["workers"][0]["consumer"] == "w1"
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
    store.client.hset(KEYS.health, LAST_DELIVERED_AT, NOW - 1)
    # Stamped by its producer when it was enqueued, 301 s ago: no metadata line.
    store.push(build_record("openai::gpt-4o", {"input_tokens": 1}, timestamp=NOW - 301).body)
    assert read_figures(store).problems == ["oldest queued record is 301s old (threshold 300s)"]
    assert read_figures(store, Thresholds(max_oldest_queued_s=301)).problems == []


def test_a_backfill_is_aged_from_when_it_was_enqueued_not_from_its_timestamp(
    store: RecordStore,
) -> None:
    seen(store, w=1)
    store.client.hset(KEYS.health, IDLE_AT, NOW - 1)
    backfill = build_record("openai::gpt-4o", {"input_tokens": 1}, timestamp=NOW - 86_400)
    store.push(encode(backfill.body, {"enqueued_at": NOW - 3, "api_key_alias": "team-a"}))
    figures = read_figures(store)
    assert figures.oldest_queued_s == 3.0
    assert figures.healthy, figures.problems


def test_health_marks_are_read_as_ages_on_the_servers_clock(store: RecordStore) -> None:
    seen(store, w=1)
    store.client.hset(
        KEYS.health,
        mapping={
            LAST_DELIVERED_AT: NOW - 500,
            IDLE_AT: NOW - 400,
            UNAUTHORIZED_SINCE: NOW - 130,
            LAST_UNAUTHORIZED_AT: NOW - 10,
        },
    )
    current = int(NOW // RATE_BUCKET_S)
    for n in range(8):
        store.client.hset(KEYS.rate(current - n), mapping={"requests": 1, "unauthorized": 1})
    store.push(build_record("openai::gpt-4o", {"input_tokens": 1}, timestamp=NOW - 1).body)
    figures = read_figures(store, Thresholds(window_s=30))
    assert (figures.last_delivered_s_ago, figures.idle_s_ago) == (500.0, 400.0)
    assert (figures.unauthorized_for_s, figures.last_unauthorized_s_ago) == (130.0, 10.0)
    assert figures.recent["requests"] == 8 and figures.recent["unauthorized"] == 8
    assert [p.split(" ")[0] for p in figures.problems] == ["1", "/track"]
    assert "none delivered for 400s (threshold 30s)" in figures.problems[0]


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
