"""The local server's cost ledger: :func:`open_store` picks its storage.

Two storages behind one interface, :class:`~aicm_tasks.server.ledger.EventStore`:
SQLite (the default, one file; ``sqlite_store.py``) and PostgreSQL
(``postgres_store.py``) when the database is given as a ``postgresql://`` URL.
Both build on :mod:`aicm_tasks.server.ledger` (rows, rollups, counters, reads)
and :mod:`aicm_tasks.server.schema` (their tables, described once); this module
is the only one that knows both.

Why the standard library's ``sqlite3`` and ``psycopg`` 3 rather than an ORM or
SQLAlchemy: the hot path is one statement per batch of 500 and each backend
dedupes its own way (SQLite with an in-memory set, PostgreSQL with ``ON
CONFLICT``), so a portability layer would hide exactly the part that differs;
what they share is written once, in the SQL both speak, with ``?`` placeholders
the PostgreSQL store rewrites.
"""

from __future__ import annotations

# Re-exported: the server, the CLI's reports, bench/ and tests name them from here.
from aicm_tasks.server.ledger import MAX_LIST_LIMIT as MAX_LIST_LIMIT
from aicm_tasks.server.ledger import EventStore as EventStore
from aicm_tasks.server.ledger import RollupRow as RollupRow

#: URL schemes that select the PostgreSQL store.
POSTGRES_SCHEMES = ("postgresql://", "postgres://", "postgresql+psycopg://")


def open_store(db: str) -> EventStore:
    """Open the store at ``db``: a ``postgresql://`` URL, or an SQLite path / ``sqlite:///`` URL."""
    if db.startswith(POSTGRES_SCHEMES):
        # Imported when chosen: psycopg is an optional extra.
        from aicm_tasks.server.postgres_store import PostgresEventStore

        return PostgresEventStore(db)
    from aicm_tasks.server.sqlite_store import SqliteEventStore

    return SqliteEventStore(db.removeprefix("sqlite:///") if db.startswith("sqlite:///") else db)
