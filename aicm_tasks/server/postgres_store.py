"""The cost ledger in PostgreSQL, for teams that outgrow one SQLite file.

Needs ``psycopg`` 3 (``pip install "aicm-tasks[postgres]"``). Unlike SQLite,
deduplication is the database's: ``response_id`` is UNIQUE and a batch goes in
as one ``INSERT ... SELECT FROM unnest(...) ON CONFLICT DO NOTHING RETURNING``
statement, so several server processes may share one database. The rollup
upserts and counter updates follow in the same transaction, in key order, so
concurrent servers cannot deadlock on them.

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
    EVENT_COLUMNS,
    EVENTS,
    POSTGRES,
    POSTGRES_ARRAY_TYPES,
    SEED_COUNTER,
    UPSERT_ROLLUP,
)

try:
    import psycopg
except ImportError:  # pragma: no cover - exercised only without the extra
    psycopg = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

_KINDS = {column.name: column.kind for column in EVENTS.columns}
_INSERT = (
    f"INSERT INTO events ({', '.join(EVENT_COLUMNS)})"
    f" SELECT {', '.join(EVENT_COLUMNS)} FROM unnest("
    + ", ".join(f"%s::{POSTGRES_ARRAY_TYPES[_KINDS[c]]}" for c in EVENT_COLUMNS)
    + f") WITH ORDINALITY AS batch ({', '.join(EVENT_COLUMNS)}, position)"
    " ORDER BY position"
    " ON CONFLICT (response_id) DO NOTHING RETURNING response_id"
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
        self._conn = self._connect()
        with self._conn.transaction():
            self._conn.execute(POSTGRES.create_tables())
            self._conn.cursor().executemany(_pg(SEED_COUNTER), [(name,) for name in COUNTERS])
        logger.debug("event store open at %s", self.location)

    def _connect(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self._url, autocommit=True, connect_timeout=10)

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
        columns = [list(column) for column in zip(*unique, strict=True)] if unique else []
        with self._lock:
            conn = self._connection()
            with conn.transaction(), conn.cursor() as cursor:
                inserted: set[str] = set()
                if unique:
                    cursor.execute(_INSERT, columns)
                    inserted = {response_id for (response_id,) in cursor.fetchall()}
                new_rows = [row for row in unique if row[0] in inserted]
                deltas = rollup_deltas(new_rows)
                if deltas:
                    cursor.executemany(_pg(UPSERT_ROLLUP), deltas)
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
