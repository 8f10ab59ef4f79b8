"""EventStore over both storages (SQLite and PostgreSQL): events deduplicated by
response_id, persistent counters, daily rollups."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from aicm_tasks.server.pricing import Cost
from aicm_tasks.server.sqlite_store import SqliteEventStore
from aicm_tasks.server.store import EventStore, RollupRow, open_store


def make_record(response_id: str, **overrides: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "service_key": "openai::gpt-4o-mini",
        "response_id": response_id,
        "timestamp": "1732270000.5",
        "payload": {"input_tokens": 10, "output_tokens": 20},
    }
    record.update(overrides)
    return record


@pytest.fixture
def store(ledger_db: str) -> Iterator[EventStore]:
    with open_store(ledger_db) as opened:
        yield opened


def test_a_batch_is_stored_and_reported_new(store: EventStore) -> None:
    assert store.add_batch([make_record("a"), make_record("b")]) == [True, True]
    assert store.has("a") and store.has("b")
    assert not store.has("c")
    assert store.stats() == {
        "events": 2,
        "received": 2,
        "duplicates": 0,
        "unknown_service": 0,
        "errors": 0,
    }


def test_a_stored_response_id_is_a_duplicate_in_a_later_batch(store: EventStore) -> None:
    store.add_batch([make_record("a")])
    assert store.add_batch([make_record("a"), make_record("b")]) == [False, True]
    stats = store.stats()
    assert (stats["events"], stats["received"], stats["duplicates"]) == (2, 3, 1)


def test_a_repeat_within_one_batch_is_a_duplicate_and_the_first_wins(store: EventStore) -> None:
    first = make_record("a", payload={"input_tokens": 1})
    again = make_record("a", payload={"input_tokens": 2})
    assert store.add_batch([first, again]) == [True, False]
    [event] = store.list_events()
    assert event["payload"] == {"input_tokens": 1}
    assert store.stats()["duplicates"] == 1


def test_not_stored_counts_are_received_but_not_events(store: EventStore) -> None:
    store.add_batch([make_record("a")], not_stored={"unknown_service": 2, "errors": 3})
    store.count({"errors": 1})
    assert store.stats() == {
        "events": 1,
        "received": 7,
        "duplicates": 0,
        "unknown_service": 2,
        "errors": 4,
    }


def test_an_unknown_counter_is_refused(store: EventStore) -> None:
    with pytest.raises(ValueError, match="unknown counters"):
        store.add_batch([], not_stored={"bogus": 1})
    with pytest.raises(ValueError, match="unknown counters"):
        store.add_batch([], not_stored={"events": 1})  # derived from the inserts, not reported


def test_events_and_counters_survive_a_restart(ledger_db: str) -> None:
    with open_store(ledger_db) as store:
        store.add_batch([make_record("a"), make_record("a")], not_stored={"errors": 1})
    with open_store(ledger_db) as reopened:
        assert reopened.has("a")
        assert reopened.add_batch([make_record("a")]) == [False]  # dedupe spans restarts
        assert reopened.stats() == {
            "events": 1,
            "received": 4,
            "duplicates": 2,
            "unknown_service": 0,
            "errors": 1,
        }


def test_the_database_is_in_wal_mode_with_normal_sync(tmp_path: Path) -> None:
    path = tmp_path / "events.sqlite3"
    with SqliteEventStore(str(path)):
        conn = sqlite3.connect(path)
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        conn.close()


def test_list_events_returns_fields_in_arrival_order(store: EventStore) -> None:
    store.add_batch(
        [
            make_record("b", customer_key="c1", context={"env": "prod"}),
            make_record("a"),
        ]
    )
    events = store.list_events()
    assert [e["response_id"] for e in events] == ["b", "a"]
    first = events[0]
    assert first["service_key"] == "openai::gpt-4o-mini"
    assert first["customer_key"] == "c1"
    assert first["timestamp"] == 1732270000.5
    assert first["payload"] == {"input_tokens": 10, "output_tokens": 20}
    assert first["context"] == {"env": "prod"}
    assert isinstance(first["received_at"], float)
    assert events[1]["context"] is None


def test_list_events_pages_and_filters(store: EventStore) -> None:
    store.add_batch(
        [
            make_record(f"r{i}", service_key=f"v::s{i % 2}", customer_key=f"c{i % 3}")
            for i in range(10)
        ]
    )
    page = store.list_events(limit=3, offset=2)
    assert [e["response_id"] for e in page] == ["r2", "r3", "r4"]
    assert [e["response_id"] for e in store.list_events(service_key="v::s1")] == [
        "r1",
        "r3",
        "r5",
        "r7",
        "r9",
    ]
    both = store.list_events(service_key="v::s0", customer_key="c0")
    assert [e["response_id"] for e in both] == ["r0", "r6"]
    with pytest.raises(ValueError):
        store.list_events(limit=-1)


def test_memory_database_works() -> None:
    with open_store(":memory:") as store:
        assert store.add_batch([make_record("a")]) == [True]
        assert store.stats()["events"] == 1


def test_a_failed_batch_stores_nothing_and_leaves_its_ids_unseen(store: EventStore) -> None:
    bad = make_record("b", payload={"x": object()})  # not JSON-serialisable
    with pytest.raises(TypeError):
        store.add_batch([make_record("a"), bad])
    assert not store.has("a")
    assert store.stats()["received"] == 0
    assert store.add_batch([make_record("a")]) == [True]


def test_concurrent_batches_from_threads_keep_exact_counts(store: EventStore) -> None:
    # Every thread sends the same 200 response_ids: each id is stored exactly once.
    ids = [f"r{i}" for i in range(200)]
    results: list[list[bool]] = []

    def send() -> None:
        for start in range(0, len(ids), 50):
            results.append(store.add_batch([make_record(i) for i in ids[start : start + 50]]))

    threads = [threading.Thread(target=send) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(sum(batch) for batch in results) == 200
    assert store.stats() == {
        "events": 200,
        "received": 800,
        "duplicates": 600,
        "unknown_service": 0,
        "errors": 0,
    }


def cost(usd: str) -> Cost:
    amount = Decimal(usd)
    return Cost("openai", "gpt-4o-mini", amount, Decimal(0), amount, "9.9.9")


DAY1 = "1732270000.5"  # 2024-11-22 UTC
DAY2 = "1732356400.5"  # 2024-11-23 UTC


def test_new_events_update_daily_rollups_and_duplicates_do_not(store: EventStore) -> None:
    batch = [
        make_record("a", customer_key="c1", payload={"input_tokens": 10, "output_tokens": 5}),
        make_record("b", customer_key="c1", payload={"input_tokens": 30, "reasoning_tokens": 0}),
        make_record("c", timestamp=DAY2, payload={"prompt_tokens": 7, "completion_tokens": 3}),
    ]
    assert store.add_batch(batch, costs=[cost("0.25"), cost("0.5"), None]) == [True, True, True]
    # The same records again, and a repeat inside the batch: nothing more in the rollups.
    store.add_batch([batch[0], batch[0], batch[2]], costs=[cost("9"), cost("9"), cost("9")])
    rows = store.rollups("2024-11-22", "2024-11-23")
    assert rows == [
        RollupRow("2024-11-22", "openai::gpt-4o-mini", "c1", 2, 40, 5, 0, 0, 750_000_000),
        RollupRow("2024-11-23", "openai::gpt-4o-mini", None, 1, 7, 3, 0, 0, 0),
    ]
    assert store.rollups("2024-11-23", "2024-11-30") == rows[1:]
    assert store.rollups("2024-11-22", "2024-11-23", customer_key="c1") == rows[:1]
    assert store.rollups("2024-11-22", "2024-11-23", service_key="v::other") == []


def test_events_carry_their_tokens_and_cost(store: EventStore) -> None:
    store.add_batch(
        [make_record("a", payload={"input_tokens": 10, "output_tokens": 20})],
        costs=[cost("0.000012")],
    )
    [event] = store.list_events()
    assert (event["input_tokens"], event["output_tokens"]) == (10, 20)
    assert event["cost"] == 0.000012
    assert event["price_catalog"] == "genai-prices 9.9.9"


def test_list_events_filters_by_timestamp(store: EventStore) -> None:
    store.add_batch([make_record("a"), make_record("b", timestamp=DAY2)])
    day2_start = 1732320000.0  # 2024-11-23T00:00:00Z
    assert [e["response_id"] for e in store.list_events(start_s=day2_start)] == ["b"]
    assert [e["response_id"] for e in store.list_events(end_s=day2_start)] == ["a"]


def test_a_database_from_before_the_ledger_is_upgraded(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    conn = sqlite3.connect(path)
    conn.executescript(
        "CREATE TABLE events (seq INTEGER PRIMARY KEY, response_id TEXT NOT NULL,"
        " service_key TEXT NOT NULL, customer_key TEXT, timestamp REAL NOT NULL,"
        " payload TEXT NOT NULL, context TEXT, received_at REAL NOT NULL);"
        "INSERT INTO events VALUES (1, 'old', 'openai::gpt-4o-mini', NULL, 1.0, '{}', NULL, 1.0);"
    )
    conn.commit()
    conn.close()
    with open_store(str(path)) as store:
        assert store.has("old")
        assert store.add_batch([make_record("new")]) == [True]
        assert [e["response_id"] for e in store.list_events()] == ["old", "new"]
        assert store.list_events()[0]["cost"] is None


def test_open_store_picks_the_storage_by_url(tmp_path: Path) -> None:
    with open_store(f"sqlite:///{tmp_path}/x.sqlite3") as store:
        assert store.backend == "sqlite"
        assert store.location == f"{tmp_path}/x.sqlite3"


def test_the_postgres_location_hides_the_password() -> None:
    from aicm_tasks.redact import redact_url

    shown = redact_url("postgresql://aicm:s3cret@db.internal:5432/ledger")
    assert "s3cret" not in shown
    assert "db.internal" in shown


def test_rollups_are_summed_by_the_database_over_the_columns_not_grouped(
    store: EventStore,
) -> None:
    store.add_batch(
        [
            make_record("a", customer_key="c1", payload={"input_tokens": 10}),
            make_record("b", customer_key="c2", payload={"input_tokens": 20}),
            make_record("c", timestamp=DAY2, service_key="v::other", payload={"input_tokens": 5}),
        ],
        costs=[cost("1"), cost("2"), cost("4")],
    )
    by_service = store.rollups("2024-11-22", "2024-11-23", group_by=("service_key",))
    assert [(r.service_key, r.requests, r.input_tokens, r.cost_nano_usd) for r in by_service] == [
        ("openai::gpt-4o-mini", 2, 30, 3_000_000_000),
        ("v::other", 1, 5, 4_000_000_000),
    ]
    assert by_service[0].day == "" and by_service[0].customer_key is None
    by_day = store.rollups("2024-11-22", "2024-11-23", group_by=("day",))
    assert [(r.day, r.requests) for r in by_day] == [("2024-11-22", 2), ("2024-11-23", 1)]
    [everything] = store.rollups("2024-11-22", "2024-11-23", group_by=())
    assert (everything.requests, everything.cost_nano_usd) == (3, 7_000_000_000)
    assert store.rollups("2025-01-01", "2025-01-31", group_by=()) == []
    with pytest.raises(ValueError, match="group by"):
        store.rollups("2024-11-22", "2024-11-23", group_by=("payload",))


def test_a_record_rolls_up_into_its_utc_day_at_the_day_boundary(store: EventStore) -> None:
    # PostgreSQL names the day in SQL, SQLite in Python: the same day on both.
    store.add_batch(
        [
            make_record("last", timestamp="1732319999.999"),  # 2024-11-22T23:59:59.999Z
            make_record("first", timestamp="1732320000"),  # 2024-11-23T00:00:00Z
            make_record("fraction", timestamp="1732320000.0000001"),
        ]
    )
    assert [(row.day, row.requests) for row in store.rollups("2024-11-01", "2024-11-30")] == [
        ("2024-11-22", 1),
        ("2024-11-23", 2),
    ]
