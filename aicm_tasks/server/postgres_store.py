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

try:
    import psycopg
except ImportError:  # pragma: no cover - exercised only without the extra
    psycopg = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq                 BIGSERIAL PRIMARY KEY,
    response_id         TEXT NOT NULL UNIQUE,
    service_key         TEXT NOT NULL,
    customer_key        TEXT,
    timestamp           DOUBLE PRECISION NOT NULL,
    payload             TEXT NOT NULL,
    context             TEXT,
    received_at         DOUBLE PRECISION NOT NULL,
    input_tokens        BIGINT NOT NULL DEFAULT 0,
    output_tokens       BIGINT NOT NULL DEFAULT 0,
    cached_input_tokens BIGINT NOT NULL DEFAULT 0,
    cache_write_tokens  BIGINT NOT NULL DEFAULT 0,
    reasoning_tokens    BIGINT NOT NULL DEFAULT 0,
    cost_nano_usd       BIGINT,
    catalog_version     TEXT
);
CREATE INDEX IF NOT EXISTS events_service_key ON events (service_key);
CREATE TABLE IF NOT EXISTS counters (
    name  TEXT PRIMARY KEY,
    value BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS daily_rollups (
    day                 TEXT NOT NULL,
    service_key         TEXT NOT NULL,
    customer_key        TEXT NOT NULL,
    requests            BIGINT NOT NULL,
    input_tokens        BIGINT NOT NULL,
    output_tokens       BIGINT NOT NULL,
    cached_input_tokens BIGINT NOT NULL,
    reasoning_tokens    BIGINT NOT NULL,
    cost_nano_usd       BIGINT NOT NULL,
    PRIMARY KEY (day, service_key, customer_key)
);
"""

#: PostgreSQL array type of each event column, for the one-statement unnest insert.
_ARRAY_TYPES = {
    "timestamp": "float8[]",
    "received_at": "float8[]",
    "input_tokens": "int8[]",
    "output_tokens": "int8[]",
    "cached_input_tokens": "int8[]",
    "cache_write_tokens": "int8[]",
    "reasoning_tokens": "int8[]",
    "cost_nano_usd": "int8[]",
}
_INSERT = (
    f"INSERT INTO events ({', '.join(EVENT_COLUMNS)})"
    f" SELECT {', '.join(EVENT_COLUMNS)} FROM unnest("
    + ", ".join(f"%s::{_ARRAY_TYPES.get(c, 'text[]')}" for c in EVENT_COLUMNS)
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
            self._conn.execute(_SCHEMA)
            self._conn.cursor().executemany(
                "INSERT INTO counters (name, value) VALUES (%s, 0) ON CONFLICT DO NOTHING",
                [(name,) for name in COUNTERS],
            )
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
