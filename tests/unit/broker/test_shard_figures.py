"""Several shards' figures read as one pipeline's (broker/shard_figures.py)."""

from __future__ import annotations

import dataclasses
from typing import Any

import fakeredis
import pytest

from aicm_tasks.broker import figures as figures_module
from aicm_tasks.broker.figures import Figures, Thresholds
from aicm_tasks.broker.keys import shard_keys
from aicm_tasks.broker.records import RecordStore
from aicm_tasks.broker.redis_settings import BrokerSettings
from aicm_tasks.broker.shard_figures import merge_figures, read_all_figures


def reading(**values: Any) -> Figures:
    base: dict[str, Any] = {
        "queued": 0, "held": 0, "scheduled": 0, "dead_letters": 0,
        "dead_letters_by_reason": {}, "delivered_last_minute": 0, "delivered_per_s": 0.0,
        "workers_alive": [], "last_worker_seen_s_ago": None, "oldest_queued_s": None,
        "totals": {}, "last_errors": [],
    }  # fmt: skip
    base.update(values)
    return Figures(**base)


def test_counts_add_up_ages_take_the_worst_and_workers_are_named_once() -> None:
    merged = merge_figures(
        [
            reading(queued=3, held=1, dead_letters=2, dead_letters_by_reason={"error": 2},
                    totals={"delivered": 10}, delivered_last_minute=6, delivered_per_s=0.1,
                    workers_alive=["a", "b"], last_worker_seen_s_ago=4.0, oldest_queued_s=20.0,
                    last_errors=[{"at": 1, "detail": "old"}]),
            reading(queued=5, scheduled=2, dead_letters=1, dead_letters_by_reason={"error": 1,
                    "rejected": 1}, totals={"delivered": 7}, delivered_last_minute=60,
                    delivered_per_s=1.0, workers_alive=["b", "a"], last_worker_seen_s_ago=1.0,
                    oldest_queued_s=50.0, last_errors=[{"at": 9, "detail": "new"}]),
        ],
        [0, 1],
        Thresholds(),
    )  # fmt: skip
    assert (merged.queued, merged.held, merged.scheduled, merged.dead_letters) == (8, 1, 2, 3)
    assert merged.dead_letters_by_reason == {"error": 3, "rejected": 1}
    assert merged.totals == {"delivered": 17}
    assert (merged.delivered_last_minute, merged.delivered_per_s) == (66, 1.1)
    assert merged.workers_alive == ["a", "b"]
    assert merged.last_worker_seen_s_ago == 1.0
    assert merged.oldest_queued_s == 50.0
    assert [e["detail"] for e in merged.last_errors] == ["new", "old"]
    assert merged.healthy


def test_health_is_judged_on_the_whole_and_a_shards_settings_finding_names_it() -> None:
    quiet = reading(problems=["no worker alive for 60s (never seen)"])
    evicting = reading(
        workers_alive=["w"],
        last_worker_seen_s_ago=1.0,
        problems=["maxmemory-policy is allkeys-lru: ..."],
        warnings=["AOF is off: ..."],
    )
    quiet.redis_settings.update(maxmemory_policy="noeviction")
    evicting.redis_settings.update(maxmemory_policy="allkeys-lru")
    merged = merge_figures([quiet, evicting], [0, 1], Thresholds())
    assert merged.redis_settings["maxmemory_policy"] == "noeviction"
    assert merged.redis_settings["shards"]["1"] == {"maxmemory_policy": "allkeys-lru"}
    # A worker alive on any shard is alive for the pipeline; the evicting shard is named.
    assert merged.problems == ["shard 1: maxmemory-policy is allkeys-lru: ..."]
    assert merged.warnings == ["shard 1: AOF is off: ..."]


def test_every_field_of_figures_survives_a_merge() -> None:
    merged = merge_figures([reading(), reading()], [0, 1], Thresholds())
    assert {f.name for f in dataclasses.fields(merged)} == {
        f.name for f in dataclasses.fields(Figures)
    }


def test_one_shard_is_read_exactly_as_before(monkeypatch: pytest.MonkeyPatch) -> None:
    safe = BrokerSettings("noeviction", True, "3600 1", "CONFIG")
    monkeypatch.setattr(figures_module, "read_settings", lambda client, read_by: safe)
    client = fakeredis.FakeRedis()
    stores = [RecordStore(client, shard_keys("q", "p", n, tagged=True)) for n in range(3)]
    for n, store in enumerate(stores):
        store.push_many([b"x"] * (n + 1))
    assert read_all_figures(stores[:1]).queued == 1
    assert read_all_figures(stores).queued == 6


def worker(consumer: str, seen_s_ago: float, alive: bool = True) -> dict[str, Any]:
    return {"name": f"w@{consumer}", "consumer": consumer, "seen_s_ago": seen_s_ago,
            "alive": alive}  # fmt: skip


ALIVE = {"workers_alive": ["w@c1"], "last_worker_seen_s_ago": 1.0}


def test_rates_add_up_and_the_last_delivery_is_the_most_recent_on_any_shard() -> None:
    merged = merge_figures(
        [
            reading(delivered_last_5s=10, delivered_per_s_last_5s=2.0, last_delivered_s_ago=40.0,
                    recent={"delivered": 10, "requests": 2}, window_s=30.0, **ALIVE),
            reading(delivered_last_5s=5, delivered_per_s_last_5s=1.0, last_delivered_s_ago=3.0,
                    recent={"delivered": 5, "requests": 1, "transport_failed": 1}, window_s=30.0,
                    **ALIVE),
        ],
        [0, 1],
        Thresholds(window_s=30.0),
    )  # fmt: skip
    assert (merged.delivered_last_5s, merged.delivered_per_s_last_5s) == (15, 3.0)
    assert merged.recent == {"delivered": 15, "requests": 3, "transport_failed": 1}
    assert merged.last_delivered_s_ago == 3.0
    # One setting, read alike by every shard: not added up.
    assert merged.window_s == 30.0


def test_a_worker_holding_a_lease_on_every_shard_is_listed_once() -> None:
    merged = merge_figures(
        [
            reading(workers=[worker("c1", 4.0), worker("c2", 2.0)], **ALIVE),
            reading(workers=[worker("c1", 1.0)], **ALIVE),
        ],
        [0, 1],
        Thresholds(),
    )
    assert [(w["consumer"], w["seen_s_ago"]) for w in merged.workers] == [("c1", 1.0), ("c2", 2.0)]
    assert merged.workers_alive == ["w@c1"]


def test_records_due_on_one_shard_with_nothing_delivered_anywhere_are_a_stall() -> None:
    window = Thresholds(window_s=30.0)
    stuck = reading(queued=7, idle_s_ago=200.0, last_delivered_s_ago=500.0, **ALIVE)
    # The other shard is empty and was idle a moment ago: that must not hide the stall.
    empty = reading(idle_s_ago=2.0, last_delivered_s_ago=400.0, **ALIVE)
    merged = merge_figures([stuck, empty], [0, 1], window)
    assert merged.idle_s_ago == 200.0
    assert any("7 records waiting" in p and "none delivered for 200s" in p for p in merged.problems)


def test_records_waiting_on_one_shard_while_another_delivers_are_not_a_stall() -> None:
    window = Thresholds(window_s=30.0)
    stuck = reading(queued=7, idle_s_ago=200.0, last_delivered_s_ago=500.0,
                    retrying_for_s=200.0, **ALIVE)  # fmt: skip
    delivering = reading(queued=1, idle_s_ago=100.0, last_delivered_s_ago=1.0, **ALIVE)
    merged = merge_figures([stuck, delivering], [0, 1], window)
    assert merged.last_delivered_s_ago == 1.0
    # Retries on one shard are cut at the last delivery on any shard.
    assert merged.retrying_for_s == 1.0
    assert merged.healthy, merged.problems


def test_a_refused_key_is_the_longest_run_of_401_on_any_shard() -> None:
    window = Thresholds(window_s=30.0)
    merged = merge_figures(
        [
            reading(queued=2, unauthorized_for_s=45.0, last_unauthorized_s_ago=5.0, **ALIVE),
            reading(queued=1, unauthorized_for_s=10.0, last_unauthorized_s_ago=1.0, **ALIVE),
        ],
        [0, 1],
        window,
    )
    assert (merged.unauthorized_for_s, merged.last_unauthorized_s_ago) == (45.0, 1.0)
    assert any("refused the API key (401/403) for 45s" in p for p in merged.problems)
