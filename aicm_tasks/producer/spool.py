"""The producer's local spool: where a validated record waits when the broker is down.

When publishing fails, :class:`Spool` inserts the record (already validated,
with its ``response_id`` and its due time, if any) into an SQLite database of
the user in ``AICM_SPOOL_DIR``, and the ``track`` call succeeds. A background
thread of the same process pushes spooled records back to the broker once it
answers (checked every few seconds), and ``aicm-tasks spool drain`` does the
same by hand.

Why SQLite (standard library ``sqlite3``, WAL mode) rather than the hand-written
line files of earlier versions: those lost records in four ways (a failed drain
renamed its claimed file back over the one the owner had recreated meanwhile;
a short write on a full disk glued the next record onto a torn line; due times
were not kept; any drainer of the process took every file of the process,
whatever queue it pushed to). SQLite gives what each of those needed, for
free: an append is one transaction, so a full disk or a SIGKILL leaves either
the whole record or none of it; a drainer *claims* rows (``claimed_by``) in a
transaction and deletes them only after the broker took them, so appends and
drains never overwrite each other in threads or across processes; and each row
keeps its destination and due time. The cost is an append of about 180 µs with
``synchronous=FULL`` (28 µs with ``NORMAL``; 2,000 appends with a size check,
measured on the development machine), paid only while the broker is down.

Choices, and what they cost or risk:

- One database per user (``spool-<uid>.sqlite3``): processes of one user share
  it (SQLite locks between them); another user's file is never opened, so it
  cannot block us. The directory must be on a local disk (WAL needs shared
  memory; not NFS).
- ``synchronous=FULL``: every append is fsynced, so a record survives power
  loss too. ``NORMAL`` would be six times cheaper but could lose the
  appends since the last checkpoint on power loss.
- ``busy_timeout`` is the publish timeout: an append waits at most that long
  for another process's transaction, so ``track`` stays bounded in time.
- A connection never crosses ``fork``: each process opens its own (one
  inherited from the parent is kept open and never used, since closing it in the
  child could disturb the parent's WAL).
- A claim names its drainer and time; claims older than ``CLAIM_EXPIRY_S`` (a
  drainer that died mid-push) are taken again. Records already pushed then
  reach the broker twice, with the same ``response_id``: the server dedupes.
- The size cap ``AICM_SPOOL_MAX_BYTES`` counts the database pages that hold
  records (``page_count - freelist_count``, two cheap pragmas); pages freed by
  a drain are reused, and the WAL adds at most ``JOURNAL_SIZE_LIMIT_BYTES``.
- Files of earlier versions (``*.spool`` / ``*.draining`` lines) are imported
  once, then removed (:mod:`aicm_tasks.producer.legacy_spool`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sqlite3
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from aicm_tasks.errors import SpoolFullError, SpoolWriteError
from aicm_tasks.producer.legacy_spool import import_legacy_files, legacy_files, not_ours
from aicm_tasks.settings import Settings

logger = logging.getLogger(__name__)

#: How often the drain thread looks for the broker, in seconds.
DRAIN_INTERVAL_S = 5.0
#: Records claimed and pushed per broker round trip when draining.
DRAIN_CHUNK = 1000
#: A claim older than this belongs to a drainer that died mid-push; it is taken
#: again. Far above one push (bounded by the publish timeout, about 1 s).
CLAIM_EXPIRY_S = 60.0
#: The WAL file is truncated back to this size after a checkpoint.
JOURNAL_SIZE_LIMIT_BYTES = 4 * 1024 * 1024

SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    destination TEXT NOT NULL,      -- '<key_prefix> <queue>' the record was published to
    message BLOB NOT NULL,          -- the broker message, exactly as it would have been pushed
    due_epoch_s REAL,               -- NULL: deliver now; else goes to the scheduled set
    claimed_by TEXT,                -- the drainer pushing it now, NULL when free
    claimed_at_s REAL
);
CREATE INDEX IF NOT EXISTS records_by_destination ON records (destination, id);
"""


class SpoolTarget(Protocol):
    """Where a drain puts records: :class:`aicm_tasks.broker.records.RecordStore` is one."""

    def push_many(self, messages: Sequence[bytes]) -> None: ...

    def schedule(self, items: Iterable[tuple[float, bytes]]) -> None: ...


@dataclass(frozen=True, slots=True)
class SpoolStatus:
    """What the spool holds right now.

    ``records`` are those of this spool's destination (queue and key prefix);
    ``other_records`` those spooled for other queues; ``skipped`` counts files in
    the directory that are not ours or cannot be read (each logged once).
    """

    directory: str
    files: int
    records: int
    bytes: int
    other_records: int = 0
    skipped: int = 0


def destination_of(queue: str, key_prefix: str) -> str:
    """The destination a spooled record keeps: its queue and key prefix."""
    return f"{key_prefix} {queue}"


class Spool:
    """The user's spool database in ``directory``, safe across threads, processes, forks."""

    def __init__(
        self,
        directory: Path,
        max_bytes: int,
        *,
        destination: str = destination_of("aicm.tracking", "aicm"),
        busy_timeout_s: float = 1.0,
    ) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.destination = destination
        self.busy_timeout_s = busy_timeout_s
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._conn_pid = -1
        #: Connections inherited across fork: kept, never used nor closed.
        self._inherited: list[sqlite3.Connection] = []
        self._warned: set[str] = set()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        _reset_lock_after_fork(self)

    @classmethod
    def for_settings(cls, settings: Settings) -> Spool:
        """The spool of ``AICM_SPOOL_DIR`` for the configured queue and key prefix."""
        return cls(
            settings.spool_dir,
            settings.spool_max_bytes,
            destination=destination_of(settings.queue, settings.key_prefix),
            busy_timeout_s=settings.publish_timeout_s,
        )

    @property
    def path(self) -> Path:
        """This user's database (the uid read each time: a child may change user)."""
        return self.directory / f"spool-{os.getuid()}.sqlite3"

    # -- writing -------------------------------------------------------------------
    def append(self, message: bytes, due_epoch_s: float | None = None) -> None:
        """Keep one message; raises :class:`SpoolFullError` or :class:`SpoolWriteError`."""
        self.append_many([message], due_epoch_s)

    def append_many(self, messages: Sequence[bytes], due_epoch_s: float | None = None) -> None:
        """Keep messages in one transaction: all of them, or none and an error."""
        rows = [(self.destination, message, due_epoch_s) for message in messages]
        with self._lock:
            try:
                conn = self._connection()
                conn.execute("BEGIN IMMEDIATE")
                try:
                    size = sum(len(m) for m in messages) + 64 * len(messages)
                    if self._used_bytes(conn) + size > self.max_bytes:
                        raise SpoolFullError(
                            f"the spool {self.path} is full ({self.max_bytes} bytes, "
                            "AICM_SPOOL_MAX_BYTES) and the broker does not answer; the record "
                            "was not kept. Bring the broker back, or raise AICM_SPOOL_MAX_BYTES"
                        )
                    conn.executemany(
                        "INSERT INTO records (destination, message, due_epoch_s) VALUES (?, ?, ?)",
                        rows,
                    )
                    conn.execute("COMMIT")
                except BaseException:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                    raise
            except (sqlite3.Error, OSError) as exc:
                self._drop_connection()
                raise self._write_error(exc) from exc

    @staticmethod
    def _used_bytes(conn: sqlite3.Connection) -> int:
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        free = conn.execute("PRAGMA freelist_count").fetchone()[0]
        size = conn.execute("PRAGMA page_size").fetchone()[0]
        return int((pages - free) * size)

    def _write_error(self, exc: BaseException) -> SpoolWriteError:
        name = getattr(exc, "sqlite_errorname", "") or type(exc).__name__
        if name.startswith("SQLITE_BUSY") or "locked" in str(exc):
            advice = (
                "another process held it for longer than AICM_PUBLISH_TIMEOUT_S; "
                "records spooled before are kept"
            )
        else:
            advice = (
                "the disk may be full or failing: free space there or point AICM_SPOOL_DIR at "
                "another local disk; records spooled before are kept"
            )
        return SpoolWriteError(
            f"the broker does not answer and the spool {self.path} could not keep the record "
            f"({name}: {exc}); {advice}"
        )

    # -- the connection --------------------------------------------------------------
    def _connection(self) -> sqlite3.Connection:
        """This process's connection (the caller holds ``self._lock``)."""
        if self._conn is not None and self._conn_pid == os.getpid():
            return self._conn
        if self._conn is not None:
            self._inherited.append(self._conn)  # opened by our parent before fork
            self._conn = None
        self.directory.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(
            self.path,
            timeout=self.busy_timeout_s,
            isolation_level=None,  # we say BEGIN and COMMIT ourselves
            check_same_thread=False,  # shared by the caller's threads under self._lock
        )
        try:
            with contextlib.suppress(OSError):
                os.chmod(self.path, 0o600)  # billing data: the user's alone
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute(f"PRAGMA journal_size_limit={JOURNAL_SIZE_LIMIT_BYTES}")
            conn.executescript(SCHEMA)
        except BaseException:
            conn.close()
            raise
        self._conn, self._conn_pid = conn, os.getpid()
        self._import_legacy(conn)
        return conn

    def _drop_connection(self) -> None:
        if self._conn is not None and self._conn_pid == os.getpid():
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()
        self._conn = None

    def _import_legacy(self, conn: sqlite3.Connection) -> None:
        try:
            imported = import_legacy_files(
                self.directory,
                lambda messages: _insert(conn, self.destination, messages),
                self._warn_once,
            )
        except (sqlite3.Error, OSError) as exc:
            logger.warning("spool files of an earlier version not imported yet: %s", exc)
            return
        if imported:
            logger.warning(
                "imported %d records from spool files of an earlier version in %s",
                imported,
                self.directory,
            )

    def _warn_once(self, path: Path, why: str) -> None:
        if str(path) not in self._warned:
            self._warned.add(str(path))
            logger.warning("spool file %s skipped: %s", path, why)

    # -- reading -------------------------------------------------------------------
    def has_records(self) -> bool:
        """Whether anything waits for this destination (cheap when nothing was spooled)."""
        if not self.path.exists() and not legacy_files(self.directory):
            return False
        with self._lock:
            conn = self._connection()
            row = conn.execute(
                "SELECT 1 FROM records WHERE destination = ? LIMIT 1", (self.destination,)
            ).fetchone()
        return row is not None

    def status(self) -> SpoolStatus:
        """Records (this destination's and others'), files and bytes spooled."""
        skipped = self._foreign_files()
        if not self.path.exists() and not legacy_files(self.directory):
            return SpoolStatus(str(self.directory), 0, 0, 0, 0, len(skipped))
        with self._lock:
            conn = self._connection()
            counts = dict(
                conn.execute(
                    "SELECT destination = ?, COUNT(*) FROM records GROUP BY destination = ?",
                    (self.destination, self.destination),
                ).fetchall()
            )
        size = 0
        for suffix in ("", "-wal"):
            with contextlib.suppress(FileNotFoundError):
                size += os.stat(f"{self.path}{suffix}").st_size
        files = 1 + len(legacy_files(self.directory))
        return SpoolStatus(
            str(self.directory), files, counts.get(1, 0), size, counts.get(0, 0), len(skipped)
        )

    def _foreign_files(self) -> list[Path]:
        """Files in the directory we leave alone (another user's, unreadable), logged once."""
        if not self.directory.is_dir():
            return []
        foreign = [p for p in self.directory.glob("spool-*.sqlite3") if p.name != self.path.name]
        for path in foreign:
            self._warn_once(path, "the spool of another user")
        for path in legacy_files(self.directory):
            why = not_ours(path)
            if why:
                self._warn_once(path, why)
                foreign.append(path)
        return foreign

    # -- draining ------------------------------------------------------------------
    def drain(self, target: SpoolTarget) -> int:
        """Push this destination's spooled records to ``target``; returns how many.

        Each chunk is claimed in a transaction, pushed (records with a future due
        time to the scheduled set), and deleted only after ``target`` took it. If
        pushing fails, the claim is released and the error propagates; nothing
        appended meanwhile is touched. Records appended after the drain started
        wait for the next one.
        """
        if not self.path.exists() and not legacy_files(self.directory):
            return 0
        token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        with self._lock:
            conn = self._connection()
            last = conn.execute("SELECT MAX(id) FROM records").fetchone()[0] or 0
        pushed = 0
        while True:
            rows = self._claim(token, last)
            if not rows:
                break
            try:
                _push(target, rows)
            except BaseException:
                self._release(token)
                raise
            self._forget(token)
            pushed += len(rows)
        if pushed:
            logger.warning("pushed %d spooled records to the broker", pushed)
        return pushed

    def _claim(self, token: str, last: int) -> list[tuple[bytes, float | None]]:
        now = time.time()
        with self._lock:
            conn = self._connection()
            conn.execute("BEGIN IMMEDIATE")
            try:
                # SELECT then UPDATE inside one IMMEDIATE transaction (it holds
                # the write lock), rather than UPDATE ... RETURNING: that needs
                # SQLite 3.35, newer than some systems' Python links against.
                rows = conn.execute(
                    "SELECT id, message, due_epoch_s FROM records WHERE destination = ?"
                    " AND id <= ? AND (claimed_by IS NULL OR claimed_at_s < ?)"
                    " ORDER BY id LIMIT ?",
                    (self.destination, last, now - CLAIM_EXPIRY_S, DRAIN_CHUNK),
                ).fetchall()
                conn.executemany(
                    "UPDATE records SET claimed_by = ?, claimed_at_s = ? WHERE id = ?",
                    [(token, now, row_id) for row_id, _, _ in rows],
                )
                conn.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise
        rows.sort()
        return [(bytes(message), due) for _, message, due in rows]

    def _release(self, token: str) -> None:
        """Free a failed drain's claim; if even that fails, the claim expires."""
        try:
            with self._lock:
                self._connection().execute(
                    "UPDATE records SET claimed_by = NULL, claimed_at_s = NULL "
                    "WHERE claimed_by = ?",
                    (token,),
                )
        except sqlite3.Error as exc:
            logger.warning("spool claim %s left to expire: %s", token, exc)

    def _forget(self, token: str) -> None:
        with self._lock:
            self._connection().execute("DELETE FROM records WHERE claimed_by = ?", (token,))

    # -- the background drainer -----------------------------------------------------
    def ensure_drainer(self, target: SpoolTarget, broker_ok: Callable[[], bool]) -> None:
        """Start this process's drain thread unless it runs already."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stop.clear()
            self._thread = threading.Thread(
                target=self._drain_loop,
                args=(target, broker_ok),
                name="aicm-spool-drainer",
                daemon=True,
            )
            self._thread.start()

    def stop_drainer(self) -> None:
        """Ask the drain thread to stop after its current round."""
        self._stop.set()

    def _drain_loop(self, target: SpoolTarget, broker_ok: Callable[[], bool]) -> None:
        while not self._stop.wait(DRAIN_INTERVAL_S):
            try:
                if self.has_records() and broker_ok():
                    self.drain(target)
            except Exception as exc:
                logger.warning("spooled records not pushed yet: %s", exc)


def _insert(conn: sqlite3.Connection, destination: str, messages: Sequence[bytes]) -> None:
    """Insert messages in one transaction (used for imports)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.executemany(
            "INSERT INTO records (destination, message) VALUES (?, ?)",
            [(destination, m) for m in messages],
        )
        conn.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise


def _push(target: SpoolTarget, rows: Sequence[tuple[bytes, float | None]]) -> None:
    """Records due later to the scheduled set, the rest to the queue."""
    now = time.time()
    later = [(due, message) for message, due in rows if due is not None and due > now]
    ready = [message for message, due in rows if due is None or due <= now]
    if later:
        target.schedule(later)
    if ready:
        target.push_many(ready)


def _reset_lock_after_fork(spool: Spool) -> None:
    """A child forked while another thread held the lock would wait forever on it."""
    ref = weakref.ref(spool)

    def reset() -> None:
        alive = ref()
        if alive is not None:
            alive._lock = threading.Lock()
            alive._thread = None  # threads do not survive fork

    os.register_at_fork(after_in_child=reset)
