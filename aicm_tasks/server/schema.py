"""The ledger's tables, described once; each storage renders them in its dialect.

Both storages keep the same three tables with the same columns in the same
order: ``events`` (one row per stored record), ``counters`` and
``daily_rollups``. What differs is named in :class:`Dialect`: the SQL type of
each kind of column, and whether ``response_id`` is UNIQUE (PostgreSQL dedupes
with ``ON CONFLICT``; SQLite dedupes with an in-memory set, because a unique
index on a random key made its inserts five times slower: ``sqlite_store.py``
has the figures). The rest of the SQL (rollup upserts, counter bumps, reads) is
written once with ``?`` placeholders, which the PostgreSQL store rewrites.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

#: The kinds of column; each dialect names its SQL type for each.
Kind = Literal["id", "text", "real", "int"]


@dataclass(frozen=True, slots=True)
class Column:
    """One column of a ledger table."""

    name: str
    kind: Kind
    nullable: bool = False
    #: SQL default, rendered as is (``"0"``).
    default: str | None = None
    #: Unique where the dialect enforces uniqueness (:attr:`Dialect.unique_keys`).
    unique: bool = False
    #: Added after the table's first version: an older SQLite file gets it in
    #: place (``ALTER TABLE ... ADD COLUMN``), so it needs a default or NULLs.
    added: bool = False


@dataclass(frozen=True, slots=True)
class Table:
    """A ledger table: its columns in order, its key and its indexes."""

    name: str
    columns: tuple[Column, ...]
    primary_key: tuple[str, ...] = ()
    #: ``(index name, columns)``.
    indexes: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def column_names(self) -> tuple[str, ...]:
        return tuple(column.name for column in self.columns)


@dataclass(frozen=True, slots=True)
class Dialect:
    """What the storages do differently in their tables."""

    name: str
    #: SQL type of each kind of column (``id``: the row's own increasing key).
    types: dict[str, str]
    #: Whether ``UNIQUE`` columns are declared unique (see the module docstring).
    unique_keys: bool

    def declaration(self, column: Column) -> str:
        """The column's type and constraints, as after its name in CREATE TABLE."""
        parts = [self.types[column.kind]]
        if not column.nullable and column.kind != "id":
            parts.append("NOT NULL")
        if column.unique and self.unique_keys:
            parts.append("UNIQUE")
        if column.default is not None:
            parts.append(f"DEFAULT {column.default}")
        return " ".join(parts)

    def create_tables(self) -> str:
        """``CREATE TABLE/INDEX IF NOT EXISTS`` for every ledger table."""
        statements = []
        for table in TABLES:
            lines = [f"    {c.name} {self.declaration(c)}" for c in table.columns]
            if table.primary_key:
                lines.append(f"    PRIMARY KEY ({', '.join(table.primary_key)})")
            body = ",\n".join(lines)
            statements.append(f"CREATE TABLE IF NOT EXISTS {table.name} (\n{body}\n);")
            statements += [
                f"CREATE INDEX IF NOT EXISTS {index} ON {table.name} ({', '.join(columns)});"
                for index, columns in table.indexes
            ]
        return "\n".join(statements) + "\n"

    def added_columns(self, table: Table) -> dict[str, str]:
        """The columns added after ``table``'s first version, with their declarations."""
        return {c.name: self.declaration(c) for c in table.columns if c.added}


def _tokens(*names: str, added: bool = False) -> tuple[Column, ...]:
    default = "0" if added else None
    return tuple(Column(name, "int", default=default, added=added) for name in names)


EVENTS = Table(
    "events",
    (
        Column("seq", "id"),
        Column("response_id", "text", unique=True),
        Column("service_key", "text"),
        Column("customer_key", "text", nullable=True),
        Column("timestamp", "real"),
        Column("payload", "text"),
        Column("context", "text", nullable=True),
        Column("received_at", "real"),
        *_tokens(
            "input_tokens",
            "output_tokens",
            "cached_input_tokens",
            "cache_write_tokens",
            "reasoning_tokens",
            added=True,
        ),
        Column("cost_nano_usd", "int", nullable=True, added=True),
        Column("catalog_version", "text", nullable=True, added=True),
    ),
    indexes=(("events_service_key", ("service_key",)),),
)
COUNTERS_TABLE = Table(
    "counters", (Column("name", "text"), Column("value", "int")), primary_key=("name",)
)
#: The unique key of ``daily_rollups``: no customer is stored as '' (NULLs
#: would never conflict in the key).
ROLLUP_KEY_COLUMNS = ("day", "service_key", "customer_key")
DAILY_ROLLUPS = Table(
    "daily_rollups",
    (
        *(Column(name, "text") for name in ROLLUP_KEY_COLUMNS),
        *_tokens(
            "requests",
            "input_tokens",
            "output_tokens",
            "cached_input_tokens",
            "reasoning_tokens",
            "cost_nano_usd",
        ),
    ),
    primary_key=ROLLUP_KEY_COLUMNS,
)
TABLES = (EVENTS, COUNTERS_TABLE, DAILY_ROLLUPS)

SQLITE = Dialect(
    "sqlite",
    # INTEGER PRIMARY KEY is SQLite's rowid: rows append at the table's end.
    {"id": "INTEGER PRIMARY KEY", "text": "TEXT", "real": "REAL", "int": "INTEGER"},
    unique_keys=False,
)
POSTGRES = Dialect(
    "postgresql",
    {"id": "BIGSERIAL PRIMARY KEY", "text": "TEXT", "real": "DOUBLE PRECISION", "int": "BIGINT"},
    unique_keys=True,
)

#: Columns of ``events`` written per record (all but ``seq``), in the order of
#: :func:`aicm_tasks.server.ledger.event_rows`' tuples.
EVENT_COLUMNS = EVENTS.column_names()[1:]
#: Summed columns of ``daily_rollups``.
ROLLUP_SUMS = DAILY_ROLLUPS.column_names()[len(ROLLUP_KEY_COLUMNS) :]
#: Counter names kept in the ``counters`` table; ``stats()`` returns them all.
COUNTERS = ("events", "received", "duplicates", "unknown_service", "errors")

#: The shared statements, in ``?`` style (SQLite >= 3.24 and PostgreSQL both
#: speak ``ON CONFLICT``).
UPSERT_ROLLUP = (
    f"INSERT INTO daily_rollups ({', '.join(DAILY_ROLLUPS.column_names())})"
    f" VALUES ({', '.join('?' for _ in DAILY_ROLLUPS.columns)})"
    f" ON CONFLICT ({', '.join(ROLLUP_KEY_COLUMNS)}) DO UPDATE SET "
    + ", ".join(f"{c} = daily_rollups.{c} + excluded.{c}" for c in ROLLUP_SUMS)
)
BUMP_COUNTER = "UPDATE counters SET value = value + ? WHERE name = ?"
SEED_COUNTER = "INSERT INTO counters (name, value) VALUES (?, 0) ON CONFLICT DO NOTHING"
