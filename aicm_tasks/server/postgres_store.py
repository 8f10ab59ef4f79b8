"""The cost ledger in PostgreSQL, for teams that outgrow one SQLite file.

Needs ``psycopg`` 3 (``pip install "aicm-tasks[postgres]"``). Unlike SQLite,
deduplication is the database's: ``response_id`` is UNIQUE, so several server
processes may share one database. A batch is written in one transaction:

1. its rows are ``COPY``-ed (binary) into a temporary table of the session
   (``ON COMMIT DELETE ROWS``);
2. one statement moves them into ``events`` (``INSERT ... SELECT ... ON
   CONFLICT DO NOTHING RETURNING``, which says which were new) and, in a
   data-modifying ``WITH``, upserts the new rows' daily rollups, one row per
   (day, service key, customer key) group, in key order (``GROUP BY ... ORDER
   BY ... ON CONFLICT DO UPDATE``); the day is named in SQL exactly as
   ``ledger.utc_day`` names it (whole seconds, then whole days: integers);
3. the counters are bumped, in name order.

Rows and upserts are taken in key order, so concurrent servers cannot deadlock
on them. Measured with ``bench/ledger.py`` (500 records a batch, nearly one
rollup group per record): the one-statement ``unnest`` insert took ~40 µs a
record and an ``executemany`` of rollup upserts ~23 µs; ``COPY`` brings them
to ~11 and ~8 µs (``bench/results/ledger.md`` has the totals). Binary
``COPY`` rather than text saves the client ~2 µs a record (psycopg's binary
dumpers of numbers are cheaper than its text ones), and summing the rollups in
the database rather than in Python and ``COPY``-ing them ~2 µs more (the
server's own time unchanged, ~16 µs a record spread, ~13 in time order).

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
)
from aicm_tasks.server.schema import (
    BUMP_COUNTER,
    COUNTERS,
    EVENT_COLUMNS,
    EVENTS,
    POSTGRES,
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
)
#: Binary COPY: the server reads numbers as they are, not parsed from text.
_BINARY = " (FORMAT BINARY)"
#: PostgreSQL type of each kind of column, for binary COPY.
_COPY_TYPES = {"text": "text", "real": "float8", "int": "int8"}
_EVENT_TYPES = ["int8", *(_COPY_TYPES[c.kind] for c in EVENTS.columns[1:])]
_COPY_EVENTS = f"COPY batch_events (position, {_COLUMNS}) FROM STDIN{_BINARY}"
#: Token columns summed into the rollups.
_SUMS = ("input_tokens", "output_tokens", "cached_input_tokens", "reasoning_tokens")
#: The batch moved into ``events`` (first of each response_id, in arrival order,
#: duplicates skipped) and the new rows' rollups upserted, one row per group in
#: key order (lock order), in one statement; it answers the new response_ids.
_INSERT_AND_ROLL_UP = (
    f"WITH new AS (INSERT INTO events ({_COLUMNS})"
    f" SELECT {_COLUMNS} FROM batch_events ORDER BY position"
    " ON CONFLICT (response_id) DO NOTHING"
    " RETURNING response_id, service_key, customer_key, timestamp, "
    + ", ".join(_SUMS)
    + ", cost_nano_usd),"
    f" rolled AS ({UPSERT_ROLLUP.split(' VALUES ')[0]}"
    # The UTC day as ledger.utc_day names it: integer seconds floored, then whole days.
    " SELECT to_char(DATE '1970-01-01' + (floor(timestamp)::bigint / 86400)::int, 'YYYY-MM-DD'),"
    " service_key, COALESCE(customer_key, ''), count(*), "
    + ", ".join(f"sum({c})::bigint" for c in _SUMS)
    + ", COALESCE(sum(cost_nano_usd), 0)::bigint FROM new GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
    f" ON CONFLICT {UPSERT_ROLLUP.split(' ON CONFLICT ')[1]})"
    " SELECT response_id FROM new"
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
                    cursor.execute(_INSERT_AND_ROLL_UP)
                    inserted = {response_id for (response_id,) in cursor.fetchall()}
                cursor.executemany(
                    _pg(BUMP_COUNTER), counter_bumps(len(inserted), len(rows), extra)
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
