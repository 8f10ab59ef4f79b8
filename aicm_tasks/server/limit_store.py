"""Usage limits, their trip events and webhook endpoints, kept in the ledger's database.

Three small tables beside the ledger's (``usage_limits``, ``limit_events``,
``webhook_endpoints``), on a connection of their own: the ledger's hot path
(``sqlite_store.py``, ``postgres_store.py``) stays untouched, and these rows
change a few times a day, not per record. With SQLite the file is the same
(WAL lets both connections read while one writes); a ``:memory:`` ledger gets
a private in-memory database here too. With PostgreSQL several servers may
share the tables: a trip event's id is derived from the limit and its period,
and inserted with ``ON CONFLICT DO NOTHING``, so exactly one server notifies
the webhooks of each trip.

The SQL is written once with ``?`` placeholders; the PostgreSQL side rewrites them.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from typing import Any

from aicm_tasks.errors import ConfigurationError
from aicm_tasks.redact import redact_url

#: URL schemes that select PostgreSQL (as ``store.open_store`` reads them).
_POSTGRES_SCHEMES = ("postgresql://", "postgres://", "postgresql+psycopg://")

#: Columns of ``usage_limits``, in the order :meth:`LimitStore.limits` returns them.
LIMIT_COLUMNS = (
    "uuid",
    "threshold_type",
    "amount_nano_usd",
    "period",
    "service_key",
    "customer_key",
    "team_uuid",
    "api_key_uuid",
    "notification_list",
    "active",
    "created_at",
)
#: Columns of ``webhook_endpoints``, in the order :meth:`LimitStore.webhooks` returns them.
WEBHOOK_COLUMNS = ("uuid", "url", "secret", "active", "tolerance", "created_at", "updated_at")
#: Columns of ``limit_events``.
EVENT_COLUMNS = ("event_id", "limit_id", "period_start", "triggered_at", "expires_at")

_TABLES = """
CREATE TABLE IF NOT EXISTS usage_limits (
    uuid TEXT PRIMARY KEY, threshold_type TEXT NOT NULL, amount_nano_usd {int} NOT NULL,
    period TEXT NOT NULL, service_key TEXT, customer_key TEXT, team_uuid TEXT,
    api_key_uuid TEXT, notification_list TEXT, active {int} NOT NULL, created_at {real} NOT NULL
);
CREATE TABLE IF NOT EXISTS limit_events (
    event_id TEXT PRIMARY KEY, limit_id TEXT NOT NULL, period_start TEXT NOT NULL,
    triggered_at {real} NOT NULL, expires_at {real} NOT NULL
);
CREATE INDEX IF NOT EXISTS limit_events_limit_id ON limit_events (limit_id);
CREATE TABLE IF NOT EXISTS webhook_endpoints (
    uuid TEXT PRIMARY KEY, url TEXT NOT NULL, secret TEXT NOT NULL, active {int} NOT NULL,
    tolerance {int} NOT NULL, created_at {real} NOT NULL, updated_at {real} NOT NULL
);
"""

Row = tuple[Any, ...]


class LimitStore:
    """The limit, trip-event and webhook tables of one ledger database. Thread-safe."""

    def __init__(self, db: str) -> None:
        """Open the tables at ``db`` (an SQLite path or ``postgresql://`` URL), creating them."""
        self._lock = threading.Lock()
        self._postgres = db.startswith(_POSTGRES_SCHEMES)
        if self._postgres:
            try:
                import psycopg
            except ImportError:  # pragma: no cover - exercised only without the extra
                raise ConfigurationError(
                    'a PostgreSQL database needs psycopg: pip install "aicm-tasks[postgres]"'
                ) from None
            self._url = db.replace("postgresql+psycopg://", "postgresql://", 1)
            self.location = redact_url(self._url)
            self._pg: Any = psycopg.connect(self._url, autocommit=True, connect_timeout=10)
            with self._pg.transaction():
                for statement in _statements("BIGINT", "DOUBLE PRECISION"):
                    self._pg.execute(statement)
        else:
            path = db.removeprefix("sqlite:///")
            self.location = path
            # timeout: wait for the ledger's write transaction on the same file.
            self._sqlite = sqlite3.connect(
                path, isolation_level=None, check_same_thread=False, timeout=30
            )
            self._sqlite.execute("PRAGMA journal_mode=WAL")
            self._sqlite.executescript(";\n".join(_statements("INTEGER", "REAL")))

    # -- usage limits -------------------------------------------------------------

    def limits(self, *, active_only: bool = False) -> list[Row]:
        """Every limit (oldest first) as a row of :data:`LIMIT_COLUMNS`."""
        where = " WHERE active = 1" if active_only else ""
        return self._fetch(
            f"SELECT {', '.join(LIMIT_COLUMNS)} FROM usage_limits{where} ORDER BY created_at, uuid",
            (),
        )

    def limit(self, uuid: str) -> Row | None:
        """The limit ``uuid``, or None."""
        rows = self._fetch(
            f"SELECT {', '.join(LIMIT_COLUMNS)} FROM usage_limits WHERE uuid = ?", (uuid,)
        )
        return rows[0] if rows else None

    def put_limit(self, row: Row) -> None:
        """Insert or replace a limit (a row of :data:`LIMIT_COLUMNS`); its trip events go.

        A changed limit is judged afresh: a raised amount un-trips it, a lowered
        one may trip it again (and notify again).
        """
        columns = ", ".join(LIMIT_COLUMNS)
        updates = ", ".join(f"{c} = excluded.{c}" for c in LIMIT_COLUMNS[1:] if c != "created_at")
        self._execute(
            [
                ("DELETE FROM limit_events WHERE limit_id = ?", (row[0],)),
                (
                    f"INSERT INTO usage_limits ({columns}) VALUES"
                    f" ({', '.join('?' for _ in LIMIT_COLUMNS)})"
                    f" ON CONFLICT (uuid) DO UPDATE SET {updates}",
                    row,
                ),
            ]
        )

    def delete_limit(self, uuid: str) -> bool:
        """Delete a limit and its trip events; False if there was none."""
        counts = self._execute(
            [
                ("DELETE FROM limit_events WHERE limit_id = ?", (uuid,)),
                ("DELETE FROM usage_limits WHERE uuid = ?", (uuid,)),
            ]
        )
        return counts[1] > 0

    # -- trip events ----------------------------------------------------------------

    def events(self, now_s: float) -> list[Row]:
        """Trip events not yet expired at ``now_s`` (rows of :data:`EVENT_COLUMNS`)."""
        return self._fetch(
            f"SELECT {', '.join(EVENT_COLUMNS)} FROM limit_events WHERE expires_at > ?"
            " ORDER BY triggered_at, event_id",
            (now_s,),
        )

    def add_event(self, row: Row) -> bool:
        """Record a trip (a row of :data:`EVENT_COLUMNS`); False if it was already recorded."""
        (count,) = self._execute(
            [
                (
                    f"INSERT INTO limit_events ({', '.join(EVENT_COLUMNS)}) VALUES (?, ?, ?, ?, ?)"
                    " ON CONFLICT (event_id) DO NOTHING",
                    row,
                )
            ]
        )
        return count > 0

    def drop_expired_events(self, now_s: float) -> None:
        """Forget trips whose period has ended."""
        self._execute([("DELETE FROM limit_events WHERE expires_at <= ?", (now_s,))])

    # -- webhook endpoints ------------------------------------------------------------

    def webhooks(self, *, active_only: bool = False) -> list[Row]:
        """Every webhook endpoint (oldest first) as a row of :data:`WEBHOOK_COLUMNS`."""
        where = " WHERE active = 1" if active_only else ""
        return self._fetch(
            f"SELECT {', '.join(WEBHOOK_COLUMNS)} FROM webhook_endpoints{where}"
            " ORDER BY created_at, uuid",
            (),
        )

    def webhook(self, uuid: str) -> Row | None:
        """The webhook endpoint ``uuid``, or None."""
        rows = self._fetch(
            f"SELECT {', '.join(WEBHOOK_COLUMNS)} FROM webhook_endpoints WHERE uuid = ?", (uuid,)
        )
        return rows[0] if rows else None

    def put_webhook(self, row: Row) -> None:
        """Insert or replace a webhook endpoint (a row of :data:`WEBHOOK_COLUMNS`)."""
        columns = ", ".join(WEBHOOK_COLUMNS)
        updates = ", ".join(f"{c} = excluded.{c}" for c in WEBHOOK_COLUMNS[1:] if c != "created_at")
        self._execute(
            [
                (
                    f"INSERT INTO webhook_endpoints ({columns}) VALUES"
                    f" ({', '.join('?' for _ in WEBHOOK_COLUMNS)})"
                    f" ON CONFLICT (uuid) DO UPDATE SET {updates}",
                    row,
                )
            ]
        )

    def delete_webhook(self, uuid: str) -> bool:
        """Delete a webhook endpoint; False if there was none."""
        (count,) = self._execute([("DELETE FROM webhook_endpoints WHERE uuid = ?", (uuid,))])
        return count > 0

    # -- plumbing -------------------------------------------------------------------

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            (self._pg if self._postgres else self._sqlite).close()

    def _fetch(self, sql: str, params: Sequence[Any]) -> list[Row]:
        with self._lock:
            if self._postgres:
                return list(self._connection().execute(sql.replace("?", "%s"), params).fetchall())
            return self._sqlite.execute(sql, tuple(params)).fetchall()

    def _execute(self, statements: Sequence[tuple[str, Sequence[Any]]]) -> list[int]:
        """Run write statements in one transaction; the rows each one changed."""
        counts: list[int] = []
        with self._lock:
            if self._postgres:
                conn = self._connection()
                with conn.transaction(), conn.cursor() as cursor:
                    for sql, params in statements:
                        cursor.execute(sql.replace("?", "%s"), params)
                        counts.append(cursor.rowcount)
                return counts
            conn = self._sqlite
            conn.execute("BEGIN IMMEDIATE")
            try:
                for sql, params in statements:
                    counts.append(conn.execute(sql, tuple(params)).rowcount)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            return counts

    def _connection(self) -> Any:
        """The PostgreSQL connection, replaced if it broke (database restarted)."""
        if self._pg.closed or self._pg.broken:
            import psycopg

            self._pg = psycopg.connect(self._url, autocommit=True, connect_timeout=10)
        return self._pg


def _statements(int_type: str, real_type: str) -> list[str]:
    script = _TABLES.format(int=int_type, real=real_type)
    return [statement.strip() for statement in script.split(";") if statement.strip()]
