"""The cost ledger in one SQLite file (the default storage).

Deduplication uses an in-memory set of the stored response_ids (rebuilt from
the table when the store opens), not a unique index. Measured on the project's
2-vCPU VM: with ``response_id`` as the PRIMARY KEY, every record of a batch of
500 dirties its own random 4 KiB index page once the table holds more than a
few thousand events, so each record costs ~4 KiB of WAL and checkpoint I/O and
inserts fell to ~40,000 records/s at 500,000 events; without the random-key
index the table only grows at its end and the same load runs at ~200,000
records/s. The price: ~100 bytes of memory per stored event, and one server
process per database file (a second writer would not see the first's set).

One connection guarded by a lock: SQLite serialises writers anyway, and the
server calls in from uvicorn's threadpool. WAL with ``synchronous=NORMAL``
syncs on checkpoints only; losing the last batches to a power cut is fine for a
development server, and a crash of the process itself loses nothing committed.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Sequence
from typing import Any

from aicm_tasks.server.store import (
    BUMP_COUNTER,
    COUNTERS,
    EVENT_COLUMNS,
    UPSERT_ROLLUP,
    EventRow,
    EventStore,
    counter_bumps,
    first_occurrences,
    rollup_deltas,
)

logger = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq                 INTEGER PRIMARY KEY,
    response_id         TEXT NOT NULL,
    service_key         TEXT NOT NULL,
    customer_key        TEXT,
    timestamp           REAL NOT NULL,
    payload             TEXT NOT NULL,
    context             TEXT,
    received_at         REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS events_service_key ON events (service_key);
CREATE TABLE IF NOT EXISTS counters (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS daily_rollups (
    day                 TEXT NOT NULL,
    service_key         TEXT NOT NULL,
    customer_key        TEXT NOT NULL,
    requests            INTEGER NOT NULL,
    input_tokens        INTEGER NOT NULL,
    output_tokens       INTEGER NOT NULL,
    cached_input_tokens INTEGER NOT NULL,
    reasoning_tokens    INTEGER NOT NULL,
    cost_nano_usd       INTEGER NOT NULL,
    PRIMARY KEY (day, service_key, customer_key)
);
"""
#: Ledger columns added to ``events`` after its first version; added in place to
#: older files (their events count zero tokens and no cost).
_LEDGER_COLUMNS = {
    "input_tokens": "INTEGER NOT NULL DEFAULT 0",
    "output_tokens": "INTEGER NOT NULL DEFAULT 0",
    "cached_input_tokens": "INTEGER NOT NULL DEFAULT 0",
    "cache_write_tokens": "INTEGER NOT NULL DEFAULT 0",
    "reasoning_tokens": "INTEGER NOT NULL DEFAULT 0",
    "cost_nano_usd": "INTEGER",
    "catalog_version": "TEXT",
}

_INSERT = (
    f"INSERT INTO events ({', '.join(EVENT_COLUMNS)})"
    f" VALUES ({', '.join('?' for _ in EVENT_COLUMNS)})"
)


class SqliteEventStore(EventStore):
    """The ledger in an SQLite file, or ``":memory:"``; one process per file."""

    backend = "sqlite"

    def __init__(self, path: str = ":memory:") -> None:
        """Open (creating or upgrading if needed) the database at ``path``."""
        self.location = path
        self._lock = threading.Lock()
        # isolation_level=None: transactions are begun explicitly, so a batch is
        # exactly one transaction and nothing is left open between calls.
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.executescript(_SCHEMA)
        present = {row[1] for row in self._conn.execute("PRAGMA table_info(events)")}
        for column, declaration in _LEDGER_COLUMNS.items():
            if column not in present:
                self._conn.execute(f"ALTER TABLE events ADD COLUMN {column} {declaration}")
        self._conn.executemany(
            "INSERT OR IGNORE INTO counters (name, value) VALUES (?, 0)",
            [(name,) for name in COUNTERS],
        )
        self._ids: set[str] = {
            response_id for (response_id,) in self._conn.execute("SELECT response_id FROM events")
        }
        logger.debug("event store open at %s with %d events", path, len(self._ids))

    def has(self, response_id: str) -> bool:
        """True if an event with ``response_id`` is stored."""
        with self._lock:
            return response_id in self._ids

    def close(self) -> None:
        """Close the connection; the store cannot be used afterwards."""
        with self._lock:
            self._conn.close()

    def _insert(self, rows: list[EventRow], extra: dict[str, int]) -> list[bool]:
        with self._lock:
            new = first_occurrences(rows, self._ids)
            new_rows = [row for row, is_new in zip(rows, new, strict=True) if is_new]
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany(_INSERT, new_rows)
                conn.executemany(UPSERT_ROLLUP, rollup_deltas(new_rows))
                conn.executemany(BUMP_COUNTER, counter_bumps(len(new_rows), len(rows), extra))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            # Only after the commit: a failed batch must leave its ids unseen.
            self._ids.update(row[0] for row in new_rows)
        return new

    def _fetch(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._conn.execute(sql, tuple(params)).fetchall()
