"""The ledger's tables are described once (server/schema.py): both storages
create exactly those columns, in that order, and differ only where the
dialect says so."""

from __future__ import annotations

import sqlite3

from aicm_tasks.server.schema import EVENTS, POSTGRES, SQLITE, TABLES
from aicm_tasks.server.store import open_store


def _columns(store: object, table: str) -> list[tuple[str, str, bool]]:
    """(name, SQL type, nullable) of ``table`` as the database reports them."""
    if store.backend == "sqlite":  # type: ignore[attr-defined]
        rows = store._fetch(f"PRAGMA table_info({table})", ())  # type: ignore[attr-defined]
        return [
            (name, kind.upper(), not notnull and not pk) for _, name, kind, notnull, _, pk in rows
        ]
    rows = store._fetch(  # type: ignore[attr-defined]
        "SELECT column_name, data_type, is_nullable FROM information_schema.columns"
        " WHERE table_name = ? ORDER BY ordinal_position",
        (table,),
    )
    return [(name, kind.upper(), nullable == "YES") for name, kind, nullable in rows]


def test_each_storage_creates_the_described_columns_in_order(ledger_db: str) -> None:
    with open_store(ledger_db) as store:
        for table in TABLES:
            found = _columns(store, table.name)
            assert [name for name, _, _ in found] == list(table.column_names()), table.name
            # Key columns are NOT NULL however a database reports them.
            declared = {
                c.name: c.nullable
                for c in table.columns
                if c.kind != "id" and c.name not in table.primary_key
            }
            assert {n: null for n, _, null in found if n in declared} == declared


def test_postgres_uses_its_wide_types_and_a_unique_response_id() -> None:
    ddl = POSTGRES.create_tables()
    assert "seq BIGSERIAL PRIMARY KEY" in ddl
    assert "response_id TEXT NOT NULL UNIQUE" in ddl
    assert "timestamp DOUBLE PRECISION NOT NULL" in ddl
    assert " INTEGER" not in ddl and " REAL" not in ddl


def test_sqlite_keeps_rowid_order_and_no_unique_index_on_response_id() -> None:
    # A unique index on the random response_id made each insert dirty its own
    # index page (sqlite_store.py): SQLite dedupes in memory instead.
    conn = sqlite3.connect(":memory:")
    conn.executescript(SQLITE.create_tables())
    indexes = conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'events'"
    ).fetchall()
    assert indexes == [("events_service_key",)]
    conn.execute(
        "INSERT INTO events (response_id, service_key, timestamp, payload, received_at)"
        " VALUES ('a', 's', 1, '{}', 1)"
    )
    assert conn.execute("SELECT seq, rowid FROM events").fetchall() == [(1, 1)]


def test_an_older_sqlite_file_gains_exactly_the_columns_added_later(tmp_path) -> None:
    path = tmp_path / "old.sqlite3"
    first = [c for c in EVENTS.columns if not c.added]
    with sqlite3.connect(path) as conn:
        conn.execute(
            "CREATE TABLE events ("
            + ", ".join(f"{c.name} {SQLITE.declaration(c)}" for c in first)
            + ")"
        )
        conn.execute(
            "INSERT INTO events (response_id, service_key, timestamp, payload, received_at)"
            " VALUES ('old', 's', 1, '{}', 1)"
        )
    with open_store(str(path)) as store:
        assert [name for name, _, _ in _columns(store, "events")] == list(EVENTS.column_names())
        (event,) = store.list_events()
        assert (event["response_id"], event["input_tokens"], event["cost"]) == ("old", 0, None)
