"""SQLite's daily rollups written every N records (sqlite_store.py): never late to a
reader, never lost to a crash, never counted twice."""

from __future__ import annotations

import random
import sqlite3
import subprocess
import sys
import textwrap
from decimal import Decimal
from pathlib import Path
from typing import Any

from aicm_tasks.server.pricing import Cost
from aicm_tasks.server.sqlite_store import SqliteEventStore
from aicm_tasks.server.store import EventStore

ROLLUPS = "SELECT * FROM daily_rollups ORDER BY day, service_key, customer_key"


def records(count: int, seed: int) -> list[dict[str, Any]]:
    """Records spread over ten days, three services, three customers (one of them none)."""
    rng = random.Random(seed)
    return [
        {
            "service_key": rng.choice(["openai::gpt-4o", "openai::gpt-4o-mini", "x::y"]),
            "response_id": f"r{seed}-{i}",
            "timestamp": f"{1732270000 + rng.random() * 10 * 86400:.3f}",
            "payload": {"input_tokens": rng.randint(0, 999), "output_tokens": rng.randint(0, 99)},
            "customer_key": rng.choice(["c1", "c2", None]),
        }
        for i in range(count)
    ]


def costs(batch: list[dict[str, Any]]) -> list[Cost | None]:
    return [
        None
        if record["service_key"] == "x::y"
        else Cost("openai", "m", Decimal("0.001"), Decimal("0.002"), Decimal("0.003"), "9.9.9")
        for record in batch
    ]


def fill(store: EventStore, batches: list[list[dict[str, Any]]]) -> None:
    for batch in batches:
        store.add_batch(batch, costs=costs(batch))


def raw_rollups(path: Path) -> list[tuple[Any, ...]]:
    """The table as another connection sees it (no flush before the read)."""
    conn = sqlite3.connect(path)
    try:
        return conn.execute(ROLLUPS).fetchall()
    finally:
        conn.close()


def per_batch_rollups(batches: list[list[dict[str, Any]]]) -> list[Any]:
    """The rollups as a store writing them with every batch keeps them."""
    with SqliteEventStore(":memory:", rollup_flush_records=1) as store:
        fill(store, batches)
        return store.query(ROLLUPS)


def test_rollups_not_written_yet_are_read_as_if_they_were(tmp_path: Path) -> None:
    batches = [records(40, seed) for seed in range(5)]
    batches.append(batches[0][:10] + records(5, 99))  # duplicates count nowhere
    expected = per_batch_rollups(batches)
    with SqliteEventStore(str(tmp_path / "l.sqlite3"), rollup_flush_records=10_000) as store:
        fill(store, batches)
        assert raw_rollups(tmp_path / "l.sqlite3") == []  # all still pending
        assert store.query(ROLLUPS) == expected
        # Records after a read are pending again, and read again.
        more = [records(30, 7)]
        fill(store, more)
        assert store.query(ROLLUPS) == per_batch_rollups([*batches, *more])


def test_rollups_are_written_with_the_batch_that_reaches_the_threshold(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite3"
    first, second = records(30, 1), records(20, 2)
    with SqliteEventStore(str(path), rollup_flush_records=50) as store:
        fill(store, [first])
        assert raw_rollups(path) == []
        fill(store, [second])
        assert raw_rollups(path) == per_batch_rollups([first, second])


def test_closing_the_store_writes_the_pending_rollups(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite3"
    batches = [records(30, 1), records(30, 2)]
    with SqliteEventStore(str(path), rollup_flush_records=1000) as store:
        fill(store, batches)
    assert raw_rollups(path) == per_batch_rollups(batches)


CRASH = """
import os, sys
sys.path[:0] = [{tests!r}]
from unit.server.test_server_sqlite_rollups import fill, records
from aicm_tasks.server.sqlite_store import SqliteEventStore
from aicm_tasks.server.store import EventStore
store = SqliteEventStore({path!r}, rollup_flush_records=100)
fill(store, [records(60, 1), records(60, 2), records(60, 3)])
os._exit(0)  # a crash: no close, 80 records' rollups only in memory
"""


def test_rollups_a_crash_left_in_memory_are_rebuilt_once_at_the_next_open(
    tmp_path: Path,
) -> None:
    path = tmp_path / "l.sqlite3"
    tests = str(Path(__file__).parents[2])
    script = textwrap.dedent(CRASH.format(tests=tests, path=str(path)))
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
    batches = [records(60, seed) for seed in (1, 2, 3)]
    expected = per_batch_rollups(batches)
    written = raw_rollups(path)
    assert written and written != expected  # the first 120 records' rollups only
    with SqliteEventStore(str(path)) as store:
        assert raw_rollups(path) == expected  # rebuilt when opened, before any read
        assert store.stats()["events"] == 180
    with SqliteEventStore(str(path)) as store:
        assert store.query(ROLLUPS) == expected  # and not a second time


def test_a_file_whose_rollups_count_every_event_is_not_rolled_up_again(tmp_path: Path) -> None:
    # A ledger written by a version that upserted rollups with every batch has
    # no rollup_state table: its rollups already count every event.
    path = tmp_path / "l.sqlite3"
    batches = [records(50, 1)]
    with SqliteEventStore(str(path), rollup_flush_records=1) as store:
        fill(store, batches)
    conn = sqlite3.connect(path)
    conn.execute("DROP TABLE rollup_state")
    conn.commit()
    conn.close()
    with SqliteEventStore(str(path)) as store:
        assert store.query(ROLLUPS) == per_batch_rollups(batches)
