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

from aicm_tasks.server.ledger import (
    EventRow,
    EventStore,
    counter_bumps,
    first_occurrences,
    rollup_deltas,
)
from aicm_tasks.server.schema import (
    BUMP_COUNTER,
    COUNTERS,
    EVENT_COLUMNS,
    EVENTS,
    SEED_COUNTER,
    SQLITE,
    UPSERT_ROLLUP,
)

logger = logging.getLogger(__name__)

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
        # A batch upserts up to one daily rollup row per record, on pages spread
        # over the whole table: a cache of 64 MiB (not the default 2 MiB) keeps
        # them in memory, and checkpoints every 10,000 pages (40 MiB of WAL, not
        # 1,000) copy a page rewritten by many batches once. Together they cut
        # the SQL of a batch from ~8.5 to ~7.3 µs a record (CPU time, bench/ledger.py).
        self._conn.execute("PRAGMA cache_size=-65536")
        self._conn.execute("PRAGMA wal_autocheckpoint=10000")
        self._conn.executescript(SQLITE.create_tables())
        # A file from before the ledger columns: they are added in place (its
        # events count zero tokens and no cost).
        present = {row[1] for row in self._conn.execute("PRAGMA table_info(events)")}
        for column, declaration in SQLITE.added_columns(EVENTS).items():
            if column not in present:
                self._conn.execute(f"ALTER TABLE events ADD COLUMN {column} {declaration}")
        self._conn.executemany(SEED_COUNTER, [(name,) for name in COUNTERS])
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

    def _execute(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        # isolation_level=None: the statement is its own transaction.
        with self._lock:
            return self._conn.execute(sql, tuple(params)).fetchall()
