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
