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

Daily rollups are written every :data:`DEFAULT_ROLLUP_FLUSH_RECORDS` new
records, not every batch: a batch's events are committed before ``/track``
answers (no record is ever only in memory), while their rollup increments are
kept in memory, then summed and upserted, with the id of the last event they cover
(``rollup_state.through_seq``), in the transaction of a later batch. Why:
records spread over days (a backfill) put nearly every record of a batch in its
own rollup row, so each batch rewrote a random page of the rollup table per
record (~4 KiB of WAL a record, ~5 µs); summed over 100 batches, each page is
written once per flush and groups of records in time order merge across
batches. Unsorted: one writer takes no locks to order, and sorting a flush's
groups cost ~0.8 µs a record. Every read of ``daily_rollups`` through this
store (reports, limits, the SDK's rollup pages) upserts the pending sums
first, so readers never see them late; closing the store does too. After a crash the rollups of events past
``through_seq`` are summed again from ``events`` when the file is next opened.
(A file written this way and then opened by an older aicm-tasks, which keeps
no ``rollup_state``, would count those events twice if opened again by this
one: the ledger is not meant to go back in versions.)

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
    rollup_upserts,
    sum_rollups,
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

#: New records whose rollups are kept in memory before they are upserted (100
#: batches of 500): their rows stay referenced until then (~25 MiB at most),
#: and their events are re-read at open after a crash (~0.2 s). Against 20,000:
#: ~0.8 µs a record less on records spread over 90 days (bench/ledger.py), as
#: more of a flush's records share a rollup row.
DEFAULT_ROLLUP_FLUSH_RECORDS = 50_000
#: SQLite only: the id (``seq``) of the last event ``daily_rollups`` counts.
_CREATE_STATE = (
    "CREATE TABLE IF NOT EXISTS rollup_state"
    " (id INTEGER PRIMARY KEY CHECK (id = 0), through_seq INTEGER NOT NULL)"
)
_SET_STATE = "UPDATE rollup_state SET through_seq = (SELECT COALESCE(MAX(seq), 0) FROM events)"
#: Events past ``through_seq``, as event rows (the columns ``sum_rollups`` reads).
_UNROLLED = (
    "SELECT response_id, service_key, customer_key, timestamp, NULL, NULL, NULL,"
    " input_tokens, output_tokens, cached_input_tokens, cache_write_tokens, reasoning_tokens,"
    " cost_nano_usd, NULL FROM events WHERE seq > ?"
)

_INSERT = (
    f"INSERT INTO events ({', '.join(EVENT_COLUMNS)})"
    f" VALUES ({', '.join('?' for _ in EVENT_COLUMNS)})"
)


class SqliteEventStore(EventStore):
    """The ledger in an SQLite file, or ``":memory:"``; one process per file."""

    backend = "sqlite"

    def __init__(
        self, path: str = ":memory:", *, rollup_flush_records: int = DEFAULT_ROLLUP_FLUSH_RECORDS
    ) -> None:
        """Open (creating or upgrading if needed) the database at ``path``.

        ``rollup_flush_records``: new records summed in memory before their
        daily rollups are written (module docstring); 1 writes every batch's.
        """
        if rollup_flush_records < 1:
            raise ValueError("rollup_flush_records must be at least 1")
        self.location = path
        self._flush_records = rollup_flush_records
        # New event rows whose rollups are not written yet (summed when they are:
        # one pass, no per-batch merging; they hold strings the events table has).
        self._pending: list[EventRow] = []
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
        self._recover_rollups()
        logger.debug("event store open at %s with %d events", path, len(self._ids))

    def has(self, response_id: str) -> bool:
        """True if an event with ``response_id`` is stored."""
        with self._lock:
            return response_id in self._ids

    def close(self) -> None:
        """Write the pending rollups and close the connection; the store cannot be used afterwards."""
        with self._lock:
            try:
                self._flush_rollups()
            finally:
                self._conn.close()

    def _recover_rollups(self) -> None:
        """Sum the rollups of events a crash left out of ``daily_rollups`` and write them."""
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(_CREATE_STATE)
            state = conn.execute("SELECT through_seq FROM rollup_state").fetchone()
            if state is None:
                # A new file, or one whose rollups were written with every batch:
                # they count every event.
                conn.execute("INSERT INTO rollup_state (id, through_seq) VALUES (0, 0)")
                conn.execute(_SET_STATE)
            else:
                sums = sum_rollups(conn.execute(_UNROLLED, (state[0],)).fetchall())
                if sums:
                    logger.warning(
                        "%s: rolling up %d events left out by a crash",
                        self.location,
                        sum(values[0] for values in sums.values()),
                    )
                    conn.executemany(UPSERT_ROLLUP, rollup_upserts(sums))
                    conn.execute(_SET_STATE)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _insert(self, rows: list[EventRow], extra: dict[str, int]) -> list[bool]:
        with self._lock:
            new = first_occurrences(rows, self._ids)
            new_rows = [row for row, is_new in zip(rows, new, strict=True) if is_new]
            flush = len(self._pending) + len(new_rows) >= self._flush_records
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany(_INSERT, new_rows)
                if flush:
                    sums = sum_rollups(new_rows, sum_rollups(self._pending))
                    conn.executemany(UPSERT_ROLLUP, rollup_upserts(sums))
                    conn.execute(_SET_STATE)
                conn.executemany(BUMP_COUNTER, counter_bumps(len(new_rows), len(rows), extra))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            # Only after the commit: a failed batch must leave its ids unseen.
            self._ids.update(row[0] for row in new_rows)
            if flush:
                self._pending = []
            else:
                self._pending += new_rows
        return new

    def _flush_rollups(self) -> None:
        """Write the pending rollup sums (the lock held)."""
        if not self._pending:
            return
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany(UPSERT_ROLLUP, rollup_upserts(sum_rollups(self._pending)))
            conn.execute(_SET_STATE)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        self._pending = []

    def _fetch(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        with self._lock:
            if "daily_rollups" in sql:
                self._flush_rollups()
            return self._conn.execute(sql, tuple(params)).fetchall()

    def _execute(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        # isolation_level=None: the statement is its own transaction.
        with self._lock:
            if "daily_rollups" in sql:
                self._flush_rollups()
            return self._conn.execute(sql, tuple(params)).fetchall()
