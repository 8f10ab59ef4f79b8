"""The spool's SQLite database: appends, and the claims a drain takes and releases.

:class:`SpoolDatabase` keeps each record the broker did not take (already
validated, with its ``response_id`` and its due time, if any) in an SQLite
database of the user in ``AICM_SPOOL_DIR``;
:class:`~aicm_tasks.producer.spool.Spool` adds its status, the drains and the
background drainer.

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
keeps its destination and due time. The cost is an append of about 28 µs with
``synchronous=NORMAL`` (180 µs with ``FULL``; 2,000 appends with a size check,
measured on the development machine), paid only while the broker is down.

Choices, and what they cost or risk:

- One database per user (``spool-<uid>.sqlite3``): processes of one user share
  it (SQLite locks between them); another user's file is never opened, so it
  cannot block us. The directory must be on a local disk (WAL needs shared
  memory; not NFS).
- ``synchronous=NORMAL``: an append survives any crash of the process (a
  SIGKILL mid-append leaves the record whole or absent), but not a power loss
  or an OS crash before the next checkpoint; Redis itself, with the
  recommended ``appendfsync everysec``, keeps about the last second at risk
  the same way. ``FULL`` fsyncs every append, and the price is paid by the
  *other* processes, since SQLite's lock is not fair: 8 processes appending
  300 records each at once waited up to 0.73 s for an append with ``FULL``
  and 0.10 s with ``NORMAL`` (2 cores), and a wait past the busy timeout is a
  ``SpoolWriteError`` at the call site, in a web request, during an outage.
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
import sqlite3
import threading
import time
import weakref
from collections.abc import Sequence
from pathlib import Path

from aicm_tasks.errors import SpoolFullError, SpoolWriteError
from aicm_tasks.producer.legacy_spool import import_legacy_files

logger = logging.getLogger(__name__)

#: Records claimed and pushed per broker round trip when draining.
DRAIN_CHUNK = 1000
#: A claim older than this belongs to a drainer that died mid-push; it is taken
#: again. Far above one push (bounded by the publish timeout, about 1 s).
CLAIM_EXPIRY_S = 60.0
#: The WAL file is truncated back to this size after a checkpoint.
JOURNAL_SIZE_LIMIT_BYTES = 4 * 1024 * 1024
#: Pause between two tries to set a new connection up while the file is locked.
SETUP_RETRY_PAUSE_S = 0.01

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


def destination_of(queue: str, key_prefix: str) -> str:
    """The destination a spooled record keeps: its queue and key prefix."""
    return f"{key_prefix} {queue}"


class SpoolDatabase:
    """The user's spool database in ``directory``, safe across threads, processes, forks.

    Appends, and a drain's claims (:meth:`_claim`, :meth:`_release`,
    :meth:`_forget`); :class:`~aicm_tasks.producer.spool.Spool` adds the
    status, the drain itself and the background drainer.
    """

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
        _reset_after_fork(self)

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
            self._configure(conn)
        except BaseException:
            conn.close()
            raise
        self._conn, self._conn_pid = conn, os.getpid()
        self._import_legacy(conn)
        return conn

    def _configure(self, conn: sqlite3.Connection) -> None:
        """WAL mode and the schema, retried while another process holds a lock.

        Switching to WAL (and the recovery a first opener runs) can answer
        "database is locked" at once, without SQLite's busy handler: seen when
        two processes open the file together. So the mode is read first (a
        file already in WAL needs no switch) and a locked answer is retried
        until the busy timeout, as an append would wait.
        """
        deadline = time.monotonic() + self.busy_timeout_s
        while True:
            try:
                mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
                if str(mode).lower() != "wal":
                    conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.execute(f"PRAGMA journal_size_limit={JOURNAL_SIZE_LIMIT_BYTES}")
                conn.executescript(SCHEMA)
                return
            except sqlite3.OperationalError as exc:
                text = str(exc).lower()
                if ("locked" not in text and "busy" not in text) or time.monotonic() > deadline:
                    raise
                time.sleep(SETUP_RETRY_PAUSE_S)

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

    # -- a drain's claims ------------------------------------------------------------
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

    def _forget_except(self, token: str, kept: Sequence[bytes]) -> None:
        """A chunk the broker took in part: release the rows of ``kept`` (the refused
        messages) and delete the rest, in one transaction. If that fails, the whole
        claim expires and is pushed again (duplicates of one ``response_id``)."""
        try:
            with self._lock:
                conn = self._connection()
                conn.execute("BEGIN IMMEDIATE")
                try:
                    conn.executemany(
                        "UPDATE records SET claimed_by = NULL, claimed_at_s = NULL "
                        "WHERE claimed_by = ? AND message = ?",
                        [(token, message) for message in kept],
                    )
                    conn.execute("DELETE FROM records WHERE claimed_by = ?", (token,))
                    conn.execute("COMMIT")
                except BaseException:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                    raise
        except sqlite3.Error as exc:
            logger.warning("spool claim %s left to expire: %s", token, exc)

    def _after_fork_in_child(self) -> None:
        """A child forked while another thread held the lock would wait forever on it."""
        self._lock = threading.Lock()


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


def _reset_after_fork(spool: SpoolDatabase) -> None:
    """Run the spool's ``_after_fork_in_child`` in every child forked while it lives."""
    ref = weakref.ref(spool)

    def reset() -> None:
        alive = ref()
        if alive is not None:
            alive._after_fork_in_child()

    os.register_at_fork(after_in_child=reset)
