"""Move the records waiting in the official SDK's SQLite queue onto the broker.

The SDK's ``PersistentDelivery`` keeps records in a SQLite file (``queue.db``
beside ``AICM.INI``, or ``delivery_queue.db``), table ``queue``: one row per
record, ``payload`` the record's JSON, ``status`` one of ``queued``,
``processing`` (in flight when the app stopped) and ``failed`` (the SDK gave up
after its retries). Delivered rows are deleted by the SDK.

:func:`import_sqlite_queue` publishes those three kinds with their original
``response_id``, timestamp, customer key and context, in chunks. Publishing
twice is prevented twice over:

- in the broker, on Redis: each chunk is pushed onto the queue **and** its
  response_ids added to the set ``<prefix>:imported`` in one MULTI/EXEC, so a
  record is never pushed without being remembered, and ids already in the set
  are skipped (:class:`RedisImportSink`);
- in the file, the chunk's rows then move, in one SQLite transaction, from
  ``queue`` to a table ``aicm_tasks_imported`` (payload, former status, when),
  so the SDK will not send them again and the file keeps every record; ids
  already in that table are skipped too.

A crash between the two steps leaves rows in ``queue`` that the set already
knows: the next run moves them without publishing. Rows that are not valid
records (bad JSON, a missing field, an API id instead of a service key) stay in
``queue`` and are reported.

On RabbitMQ (:class:`RabbitImportSink`) a queue keeps no set to ask, so the
file's own ``aicm_tasks_imported`` table is the only memory: each chunk is
published with confirms, then moved. A crash between a chunk's confirm and its
move publishes that chunk again on the next run: the same ``response_id`` values,
which ``/track`` takes once (``docs/guarantees.md``, "Idempotent identity").
A chunk the broker took only in part (a full queue) moves the rows it took and
leaves the refused ones in ``queue`` for the next run.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from aicm_tasks.broker.keys import Keys
from aicm_tasks.broker.records import BrokerClient
from aicm_tasks.contract import SDK_FIELDS
from aicm_tasks.errors import ConfigurationError, RecordError, RecordsRefusedError
from aicm_tasks.producer.publisher import RecordTarget
from aicm_tasks.producer.record import Record, build_record

#: The SDK's statuses of records still to deliver.
SDK_STATUSES = ("queued", "processing", "failed")
#: Table, in the SDK's file, that keeps the rows already published.
IMPORTED_TABLE = "aicm_tasks_imported"
#: Rows published per broker round trip.
DEFAULT_CHUNK = 500


@dataclass
class ImportReport:
    """What an import found and did (or, with ``dry_run``, would do)."""

    path: str
    dry_run: bool
    #: Rows found, by SDK status.
    found: dict[str, int] = field(default_factory=dict)
    #: Records pushed to the broker (with ``dry_run``: that would be).
    published: int = 0
    #: Records skipped because an earlier run (or an earlier row) published their response_id.
    already_published: int = 0
    #: Rows that are not valid records, left in the file: ``(row id, reason)``.
    invalid: list[tuple[int, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "dry_run": self.dry_run,
            "found": dict(self.found),
            "published": self.published,
            "already_published": self.already_published,
            "invalid": len(self.invalid),
            "invalid_rows": [{"id": row, "reason": reason} for row, reason in self.invalid],
        }


class ImportSink(Protocol):
    """Where an import publishes, and what the broker remembers of earlier imports."""

    def already_published(self, response_ids: list[str]) -> set[str]:
        """The ids among ``response_ids`` an earlier import published."""
        ...

    def publish(self, records: list[Record]) -> None:
        """Publish ``records`` (their bodies) and remember them; raises a broker error,
        or :class:`RecordsRefusedError` naming the bodies not taken."""
        ...


class RedisImportSink:
    """Redis: the queue and the set ``<prefix>:imported``, written in one MULTI/EXEC."""

    def __init__(self, client: BrokerClient, keys: Keys) -> None:
        self.client = client
        self.keys = keys

    def already_published(self, response_ids: list[str]) -> set[str]:
        """One SMISMEMBER."""
        answers = self.client.smismember(self.keys.imported, response_ids)
        return {rid for rid, seen in zip(response_ids, answers, strict=True) if seen}

    def publish(self, records: list[Record]) -> None:
        """LPUSH and SADD in one transaction: never pushed without being remembered."""
        with self.client.pipeline(transaction=True) as pipe:
            pipe.lpush(self.keys.queue, *(record.body for record in records))
            pipe.sadd(self.keys.imported, *(record.response_id for record in records))
            pipe.execute()


class RabbitImportSink:
    """RabbitMQ: confirmed publishes; the file's ``aicm_tasks_imported`` table is the
    only memory of earlier imports (see the module's docstring)."""

    def __init__(self, target: RecordTarget) -> None:
        self.target = target

    def already_published(self, response_ids: list[str]) -> set[str]:
        """Nothing the broker could say (a queue is not a set)."""
        return set()

    def publish(self, records: list[Record]) -> None:
        """One confirm wait for the chunk."""
        self.target.push_many([record.body for record in records])


def open_queue(path: Path, *, read_only: bool) -> sqlite3.Connection:
    """Open the SDK's queue file; raises :class:`ConfigurationError` if it is not one."""
    if not path.is_file():
        raise ConfigurationError(f"{path} does not exist or is not a file")
    mode = "ro" if read_only else "rw"  # never create a file that is not there
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode={mode}", uri=True)
    try:
        columns = {row[1] for row in conn.execute("PRAGMA table_info(queue)")}
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise ConfigurationError(f"{path} is not a SQLite database: {exc}") from exc
    if not {"id", "payload", "status"} <= columns:
        conn.close()
        raise ConfigurationError(
            f"{path} has no SDK queue table (queue with id, payload, status): "
            "is it the aicostmanager PersistentDelivery file (queue.db / delivery_queue.db)?"
        )
    return conn


def _rows(conn: sqlite3.Connection, chunk: int) -> Iterator[list[tuple[int, str, str]]]:
    """The rows to import, ``chunk`` at a time, in id order (the SDK's order)."""
    marks = ",".join("?" * len(SDK_STATUSES))
    last_id = -1
    while True:
        rows = conn.execute(
            f"SELECT id, payload, status FROM queue WHERE status IN ({marks}) AND id > ?"
            " ORDER BY id LIMIT ?",
            (*SDK_STATUSES, last_id, chunk),
        ).fetchall()
        if not rows:
            return
        yield rows
        last_id = rows[-1][0]


def record_of_row(payload_json: str, max_bytes: int) -> Record:
    """Validate one row's payload (the SDK's record JSON) into a :class:`Record`."""
    try:
        data = json.loads(payload_json)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"payload is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError("payload is not a JSON object")
    unknown = sorted(set(data) - set(SDK_FIELDS))
    if unknown:
        raise ValueError(f"{unknown[0]}: is not a field of a /track record")
    if "response_id" not in data:
        raise ValueError("response_id: missing (the SDK always writes one)")
    fields = {SDK_FIELDS[name]: value for name, value in data.items()}
    service_key = fields.pop("service_key", None)
    usage = fields.pop("usage", None)
    try:
        return build_record(service_key, usage, max_bytes=max_bytes, **fields)
    except RecordError as exc:
        raise ValueError(str(exc)) from None


def import_sqlite_queue(
    path: Path,
    client: BrokerClient,
    keys: Keys,
    *,
    dry_run: bool = False,
    max_record_bytes: int = 32 * 1024,
    chunk: int = DEFAULT_CHUNK,
) -> ImportReport:
    """:func:`import_records` into the Redis of ``client`` (queue and set of ``keys``)."""
    return import_records(
        path,
        RedisImportSink(client, keys),
        dry_run=dry_run,
        max_record_bytes=max_record_bytes,
        chunk=chunk,
    )


def import_records(
    path: Path,
    sink: ImportSink,
    *,
    dry_run: bool = False,
    max_record_bytes: int = 32 * 1024,
    chunk: int = DEFAULT_CHUNK,
) -> ImportReport:
    """Publish the SDK queue's ``queued``, ``processing`` and ``failed`` records to ``sink``.

    With ``dry_run`` the file is opened read-only and nothing is written
    anywhere; the report says what a real run would do. Raises
    :class:`ConfigurationError` for a file that is not the SDK's queue and a
    broker error (``BROKER_ERRORS``) when the broker does not answer or refuses
    records (rows published so far are remembered; the rest stay in the file
    for the next run).
    """
    report = ImportReport(path=str(path), dry_run=dry_run)
    conn = open_queue(path, read_only=dry_run)
    try:
        if not dry_run:
            with conn:
                conn.execute(
                    f"CREATE TABLE IF NOT EXISTS {IMPORTED_TABLE} ("
                    " queue_id INTEGER PRIMARY KEY, response_id TEXT NOT NULL,"
                    " status TEXT NOT NULL, payload TEXT NOT NULL, imported_at REAL NOT NULL)"
                )
        found: Counter[str] = Counter()
        planned: set[str] = set()  # response_ids a dry run would publish
        for rows in _rows(conn, chunk):
            found.update(status for _, _, status in rows)
            valid: list[tuple[tuple[int, str, str], Record]] = []
            for row in rows:
                try:
                    valid.append((row, record_of_row(row[1], max_record_bytes)))
                except ValueError as exc:
                    report.invalid.append((row[0], str(exc)))
            if not valid:
                continue
            ids = [record.response_id for _, record in valid]
            known = sink.already_published(ids) | _imported_before(conn, ids)
            fresh: dict[str, Record] = {}
            for _, record in valid:
                rid = record.response_id
                if rid in known or rid in fresh or rid in planned:
                    report.already_published += 1
                else:
                    fresh[rid] = record
            if dry_run:
                report.published += len(fresh)
                planned.update(fresh)
                continue
            if fresh:
                try:
                    sink.publish(list(fresh.values()))
                except RecordsRefusedError as exc:
                    # Move what the broker took; the refused rows stay for the next run.
                    refused = set(exc.refused)
                    taken = [(row, record) for row, record in valid if record.body not in refused]
                    report.published += sum(1 for r in fresh.values() if r.body not in refused)
                    _move_rows(conn, [row for row, _ in taken])
                    raise
            report.published += len(fresh)
            _move_rows(conn, [row for row, _ in valid])
        report.found = {status: found.get(status, 0) for status in SDK_STATUSES}
    finally:
        conn.close()
    return report


def _imported_before(conn: sqlite3.Connection, ids: list[str]) -> set[str]:
    """The ids among ``ids`` that an earlier run moved to the imported table."""
    exists = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (IMPORTED_TABLE,)
    ).fetchone()
    if exists is None:  # a dry run on a file never imported
        return set()
    found: set[str] = set()
    for start in range(0, len(ids), 500):  # under SQLite's limit of bound variables
        part = ids[start : start + 500]
        marks = ",".join("?" * len(part))
        rows = conn.execute(
            f"SELECT response_id FROM {IMPORTED_TABLE} WHERE response_id IN ({marks})", part
        ).fetchall()
        found.update(row[0] for row in rows)
    return found


def _move_rows(conn: sqlite3.Connection, rows: list[tuple[int, str, str]]) -> None:
    """Move published rows out of the SDK's queue, keeping them in the file."""
    now = time.time()
    with conn:  # one transaction: a row is in exactly one of the two tables
        conn.executemany(
            f"INSERT OR REPLACE INTO {IMPORTED_TABLE}"
            " (queue_id, response_id, status, payload, imported_at) VALUES (?, ?, ?, ?, ?)",
            [
                (row_id, json.loads(payload)["response_id"], status, payload, now)
                for row_id, payload, status in rows
            ],
        )
        conn.executemany("DELETE FROM queue WHERE id = ?", [(row[0],) for row in rows])
