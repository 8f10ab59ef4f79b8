"""The local server's event store: SQLite, deduplicated by response_id.

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

Counters live in a table next to the events and are updated in the same
transaction as the inserts, so ``stats()`` survives restarts and always agrees
with the events table (it never needs a ``COUNT(*)`` scan).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

logger = logging.getLogger(__name__)

#: Counter names kept in the ``counters`` table; ``stats()`` returns them all.
COUNTERS = ("events", "received", "duplicates", "unknown_service", "errors")
#: Counters of records answered without being stored, which callers report themselves.
NOT_STORED_COUNTERS = ("unknown_service", "errors")
#: Largest page ``list_events`` returns.
MAX_LIST_LIMIT = 1000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq          INTEGER PRIMARY KEY,
    response_id  TEXT NOT NULL,
    service_key  TEXT NOT NULL,
    customer_key TEXT,
    timestamp    REAL NOT NULL,
    payload      TEXT NOT NULL,
    context      TEXT,
    received_at  REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS events_service_key ON events (service_key);
CREATE TABLE IF NOT EXISTS counters (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""

_INSERT = (
    "INSERT INTO events"
    " (response_id, service_key, customer_key, timestamp, payload, context, received_at)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_BUMP = "UPDATE counters SET value = value + ? WHERE name = ?"


def _make_dumps() -> Callable[[Any], str]:
    """A compact JSON encoder for payloads: smaller rows mean fewer pages per batch."""
    encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
    make_c_encoder = getattr(json.encoder, "c_make_encoder", None)
    if make_c_encoder is None:  # no C accelerator (PyPy): the public path
        return encoder.encode
    # JSONEncoder.encode builds a new C encoder on every call, half the cost of
    # encoding a small payload; build it once. markers=None skips the cycle check:
    # records come from json.loads, which cannot produce cycles.
    c_encoder = make_c_encoder(
        None, encoder.default, json.encoder.encode_basestring, None, ":", ",", False, False, True
    )

    def dumps(obj: Any) -> str:
        return "".join(c_encoder(obj, 0))

    return dumps


_dumps = _make_dumps()


class EventStore:
    """Usage events, one per ``response_id``, with persistent counters.

    ``db_path`` is a file path or ``":memory:"``. Safe to share between threads;
    one store (one process) per database file, see the module docstring.
    """

    def __init__(self, db_path: str = ":memory:") -> None:
        """Open (creating if needed) the database at ``db_path``."""
        self.db_path = db_path
        self._lock = threading.Lock()
        # isolation_level=None: transactions are begun explicitly, so a batch is
        # exactly one transaction and nothing is left open between calls.
        self._conn = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.executescript(_SCHEMA)
        self._conn.executemany(
            "INSERT OR IGNORE INTO counters (name, value) VALUES (?, 0)",
            [(name,) for name in COUNTERS],
        )
        self._ids: set[str] = {
            response_id for (response_id,) in self._conn.execute("SELECT response_id FROM events")
        }
        logger.debug("event store open at %s with %d events", db_path, len(self._ids))

    def add_batch(
        self,
        records: Sequence[Mapping[str, Any]],
        *,
        not_stored: Mapping[str, int] | None = None,
    ) -> list[bool]:
        """Store valid contract records in one transaction; return which were new.

        A record whose ``response_id`` is already stored (or appeared earlier in
        the same batch) is a duplicate: it is not stored again and counts in
        ``duplicates``. ``not_stored`` counts the other records of the same
        request that were answered without being stored, by counter name
        (``{"unknown_service": 2, "errors": 1}``); they count as received too.
        """
        received_at = time.time()
        rows = [
            (
                record["response_id"],
                record["service_key"],
                record.get("customer_key"),
                float(record["timestamp"]),
                _dumps(record["payload"]),
                None if record.get("context") is None else _dumps(record["context"]),
                received_at,
            )
            for record in records
        ]
        extra = dict(not_stored or {})
        unknown = set(extra) - set(NOT_STORED_COUNTERS)
        if unknown:
            raise ValueError(
                f"unknown counters {sorted(unknown)} in not_stored; allowed: {NOT_STORED_COUNTERS}"
            )
        if not rows and not any(extra.values()):
            return []
        with self._lock:
            stored_ids = self._ids
            batch_ids: set[str] = set()
            new: list[bool] = []
            new_rows = []
            for row in rows:
                response_id = row[0]
                is_new = response_id not in stored_ids and response_id not in batch_ids
                new.append(is_new)
                if is_new:
                    batch_ids.add(response_id)
                    new_rows.append(row)
            bumps = {
                "events": len(new_rows),
                "duplicates": len(rows) - len(new_rows),
                "received": len(rows) + sum(extra.values()),
                **extra,
            }
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany(_INSERT, new_rows)
                conn.executemany(_BUMP, [(n, name) for name, n in bumps.items() if n])
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            # Only after the commit: a failed batch must leave its ids unseen.
            stored_ids |= batch_ids
        return new

    def count(self, counts: Mapping[str, int]) -> None:
        """Add ``counts`` (counter name -> increment) without storing events."""
        self.add_batch((), not_stored=counts)

    def stats(self) -> dict[str, int]:
        """Every counter: ``events`` (unique stored), ``received``, ``duplicates``, ..."""
        with self._lock:
            rows = self._conn.execute("SELECT name, value FROM counters").fetchall()
        values = dict(rows)
        return {name: int(values.get(name, 0)) for name in COUNTERS}

    def has(self, response_id: str) -> bool:
        """True if an event with ``response_id`` is stored."""
        with self._lock:
            return response_id in self._ids

    def list_events(
        self,
        limit: int = 100,
        offset: int = 0,
        service_key: str | None = None,
        customer_key: str | None = None,
    ) -> list[dict[str, Any]]:
        """Stored events in arrival order, optionally filtered; a page of at most ``limit``.

        Arrival order (not newest first) keeps ``offset`` paging stable while new
        events keep coming. ``limit`` is capped at :data:`MAX_LIST_LIMIT`.
        """
        if limit < 0 or offset < 0:
            raise ValueError("limit and offset must not be negative")
        where, params = _filters(service_key=service_key, customer_key=customer_key)
        sql = (
            "SELECT response_id, service_key, customer_key, timestamp, payload, context,"
            f" received_at FROM events{where} ORDER BY seq LIMIT ? OFFSET ?"
        )
        with self._lock:
            rows = self._conn.execute(sql, (*params, min(limit, MAX_LIST_LIMIT), offset)).fetchall()
        return [
            {
                "response_id": row[0],
                "service_key": row[1],
                "customer_key": row[2],
                "timestamp": row[3],
                "payload": json.loads(row[4]),
                "context": None if row[5] is None else json.loads(row[5]),
                "received_at": row[6],
            }
            for row in rows
        ]

    def close(self) -> None:
        """Close the connection; the store cannot be used afterwards."""
        with self._lock:
            self._conn.close()

    def __enter__(self) -> EventStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _filters(**equal_to: str | None) -> tuple[str, list[str]]:
    """A ``WHERE`` clause (or '') and its parameters for the non-None equalities."""
    clauses: list[str] = []
    params: list[str] = []
    for column, value in equal_to.items():
        if value is not None:
            # Column names come from this module's keyword arguments, never from input.
            clauses.append(f"{column} = ?")
            params.append(value)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), params
