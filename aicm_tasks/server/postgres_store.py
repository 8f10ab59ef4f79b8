"""The cost ledger in PostgreSQL, for teams that outgrow one SQLite file.

Needs ``psycopg`` 3 (``pip install "aicm-tasks[postgres]"``). Unlike SQLite,
deduplication is the database's: ``response_id`` is UNIQUE, so several server
processes may share one database. A batch is written in one transaction:

1. its rows are ``COPY``-ed (binary) into a temporary table of the session (``ON COMMIT
   DELETE ROWS``) and moved into ``events`` by one ``INSERT ... SELECT ... ON
   CONFLICT DO NOTHING RETURNING response_id``, which says which were new;
2. the daily rollups of the new rows, one row per (day, service key, customer
   key) group, are ``COPY``-ed into a second temporary table and upserted by
   one ``INSERT ... SELECT ... ORDER BY`` key ``ON CONFLICT DO UPDATE``;
3. the counters are bumped, in name order.

Rows and upserts are taken in key order, so concurrent servers cannot deadlock
on them. Measured with ``bench/ledger.py`` (500 records a batch, nearly one
rollup group per record): the one-statement ``unnest`` insert took ~40 µs a
record and an ``executemany`` of rollup upserts ~23 µs; ``COPY`` brings them
to ~11 and ~8 µs (``bench/results/ledger.md`` has the totals). Binary
``COPY`` rather than text saves the client ~2 µs a record (psycopg's binary
dumpers of numbers are cheaper than its text ones) and the server its parsing.

One connection guarded by a lock (the server's threadpool shares it), in
autocommit mode so reads leave no transaction open; a write is one explicit
transaction. A connection that broke (database restarted) is replaced on the
next call.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

from aicm_tasks.errors import ConfigurationError
from aicm_tasks.redact import redact_url
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
    DAILY_ROLLUPS,
    EVENT_COLUMNS,
    EVENTS,
    POSTGRES,
    ROLLUP_KEY_COLUMNS,
    SEED_COUNTER,
    UPSERT_ROLLUP,
)

try:
    import psycopg
except ImportError:  # pragma: no cover - exercised only without the extra
    psycopg = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

_COLUMNS = ", ".join(EVENT_COLUMNS)
#: The session's staging tables; rows live until the transaction ends.
_CREATE_STAGING = (
    "CREATE TEMPORARY TABLE IF NOT EXISTS batch_events"
    " (position BIGINT, LIKE events) ON COMMIT DELETE ROWS;"
    " ALTER TABLE batch_events DROP COLUMN IF EXISTS seq;"
    " CREATE TEMPORARY TABLE IF NOT EXISTS batch_rollups (LIKE daily_rollups)"
    " ON COMMIT DELETE ROWS;"
)
#: Binary COPY: the server reads numbers as they are, not parsed from text.
_BINARY = " (FORMAT BINARY)"
#: PostgreSQL type of each kind of column, for binary COPY.
_COPY_TYPES = {"text": "text", "real": "float8", "int": "int8"}
_EVENT_TYPES = ["int8", *(_COPY_TYPES[c.kind] for c in EVENTS.columns[1:])]
_ROLLUP_TYPES = [_COPY_TYPES[c.kind] for c in DAILY_ROLLUPS.columns]
_COPY_EVENTS = f"COPY batch_events (position, {_COLUMNS}) FROM STDIN{_BINARY}"
_INSERT = (
    f"INSERT INTO events ({_COLUMNS}) SELECT {_COLUMNS} FROM batch_events ORDER BY position"
    " ON CONFLICT (response_id) DO NOTHING RETURNING response_id"
)
_COPY_ROLLUPS = (
    f"COPY batch_rollups ({', '.join(DAILY_ROLLUPS.column_names())}) FROM STDIN{_BINARY}"
)
#: The shared upsert, fed from the staging table in key order (lock order).
_UPSERT_ROLLUPS = UPSERT_ROLLUP.replace(
    f" VALUES ({', '.join('?' for _ in DAILY_ROLLUPS.columns)})",
    f" SELECT * FROM batch_rollups ORDER BY {', '.join(ROLLUP_KEY_COLUMNS)}",
)


def _pg(sql: str) -> str:
    """The shared ``?``-placeholder SQL in psycopg's ``%s`` style."""
    return sql.replace("?", "%s")


class PostgresEventStore(EventStore):
    """The ledger in the PostgreSQL database at a ``postgresql://`` URL."""

    backend = "postgresql"

    def __init__(self, url: str) -> None:
        """Connect to ``url`` and create the tables if needed.

        Raises :class:`ConfigurationError` if psycopg is not installed.
        """
        if psycopg is None:
            raise ConfigurationError(
                'a PostgreSQL database needs psycopg: pip install "aicm-tasks[postgres]"'
            )
        self._url = url.replace("postgresql+psycopg://", "postgresql://", 1)
        self.location = redact_url(self._url)
        self._lock = threading.Lock()
        self._conn = self._connect()  # creates the tables, and the staging tables
        with self._conn.transaction():
            self._conn.cursor().executemany(_pg(SEED_COUNTER), [(name,) for name in COUNTERS])
        logger.debug("event store open at %s", self.location)

    def _connect(self) -> psycopg.Connection[Any]:
        conn = psycopg.connect(self._url, autocommit=True, connect_timeout=10)
        try:
            conn.execute(POSTGRES.create_tables())
            conn.execute(_CREATE_STAGING)
        except BaseException:
            conn.close()
            raise
        return conn

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn.closed or self._conn.broken:
            logger.warning("reconnecting to %s", self.location)
            self._conn = self._connect()
        return self._conn

    def has(self, response_id: str) -> bool:
        """True if an event with ``response_id`` is stored."""
        return bool(self._fetch("SELECT 1 FROM events WHERE response_id = ?", (response_id,)))

    def close(self) -> None:
        """Close the connection; the store cannot be used afterwards."""
        with self._lock:
            self._conn.close()

    def _insert(self, rows: list[EventRow], extra: dict[str, int]) -> list[bool]:
        first = first_occurrences(rows)
        unique = [row for row, is_first in zip(rows, first, strict=True) if is_first]
        with self._lock:
            conn = self._connection()
            with conn.transaction(), conn.cursor() as cursor:
                inserted: set[str] = set()
                if unique:
                    with cursor.copy(_COPY_EVENTS) as copy:
                        copy.set_types(_EVENT_TYPES)
                        for position, row in enumerate(unique):
                            copy.write_row((position, *row))
                    cursor.execute(_INSERT)
                    inserted = {response_id for (response_id,) in cursor.fetchall()}
                new_rows = [row for row in unique if row[0] in inserted]
                deltas = rollup_deltas(new_rows)
                if deltas:
                    with cursor.copy(_COPY_ROLLUPS) as copy:
                        copy.set_types(_ROLLUP_TYPES)
                        for delta in deltas:
                            copy.write_row(delta)
                    cursor.execute(_UPSERT_ROLLUPS)
                cursor.executemany(
                    _pg(BUMP_COUNTER), counter_bumps(len(new_rows), len(rows), extra)
                )
        return [is_first and row[0] in inserted for row, is_first in zip(rows, first, strict=True)]

    def _fetch(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._connection().execute(_pg(sql), tuple(params)).fetchall()

    def _execute(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        # Autocommit: the statement is its own transaction.
        with self._lock:
            cursor = self._connection().execute(_pg(sql), tuple(params))
            return cursor.fetchall() if cursor.description is not None else []
