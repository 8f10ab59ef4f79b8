"""The producer's local spool: where a validated record waits when the broker is down.

When publishing fails, the publisher appends the record to the :class:`Spool`
(an SQLite database of the user in ``AICM_SPOOL_DIR``; why SQLite, and what
each of its settings costs, in :mod:`aicm_tasks.producer.spool.database`), and
the ``track`` call succeeds. A background thread of the same process pushes
spooled records back to the broker once it answers (checked every
``DRAIN_INTERVAL_S``), and ``aicm-tasks spool drain`` does the same by hand;
``aicm-tasks spool status`` reads :meth:`Spool.status`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from aicm_tasks.errors import RecordsRefusedError
from aicm_tasks.producer.legacy_spool import legacy_files, not_ours
from aicm_tasks.producer.spool.database import SpoolDatabase, destination_of
from aicm_tasks.settings import Settings

logger = logging.getLogger(__name__)

#: How often the drain thread looks for the broker, in seconds.
DRAIN_INTERVAL_S = 5.0


class SpoolTarget(Protocol):
    """Where a drain puts records: :class:`aicm_tasks.broker.records.RecordStore` is one.

    A target that took only some records raises
    :class:`~aicm_tasks.errors.RecordsRefusedError` naming the others (RabbitMQ's
    nacks); any other error means none is known to be taken.
    """

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


class Spool(SpoolDatabase):
    """The user's spool in ``directory``: appends (:class:`SpoolDatabase`), its
    status, and drains by hand or by this process's background thread."""

    def __init__(
        self,
        directory: Path,
        max_bytes: int,
        *,
        destination: str = destination_of("aicm.tracking", "aicm"),
        busy_timeout_s: float = 1.0,
    ) -> None:
        super().__init__(
            directory, max_bytes, destination=destination, busy_timeout_s=busy_timeout_s
        )
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    @classmethod
    def for_settings(cls, settings: Settings) -> Spool:
        """The spool of ``AICM_SPOOL_DIR`` for the configured queue and key prefix."""
        return cls(
            settings.spool_dir,
            settings.spool_max_bytes,
            destination=destination_of(settings.queue, settings.key_prefix),
            busy_timeout_s=settings.publish_timeout_s,
        )

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
        appended meanwhile is touched. When the target took part of a chunk
        (:class:`RecordsRefusedError`), the rows it took are deleted and the
        refused ones released before the error propagates. Records appended after
        the drain started wait for the next one.
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
            except RecordsRefusedError as exc:
                self._forget_except(token, exc.refused)
                raise
            except BaseException:
                self._release(token)
                raise
            self._forget(token)
            pushed += len(rows)
        if pushed:
            logger.warning("pushed %d spooled records to the broker", pushed)
        return pushed

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

    def _after_fork_in_child(self) -> None:
        super()._after_fork_in_child()
        self._thread = None  # threads do not survive fork


def _push(target: SpoolTarget, rows: Sequence[tuple[bytes, float | None]]) -> None:
    """Records due later to the scheduled set, the rest to the queue.

    When the scheduled ones were taken only in part, the others are still pushed,
    and the error then names every record not taken (those refused, and all of
    the second push if it failed).
    """
    now = time.time()
    later = [(due, message) for message, due in rows if due is not None and due > now]
    ready = [message for message, due in rows if due is None or due <= now]
    refused: RecordsRefusedError | None = None
    if later:
        try:
            target.schedule(later)
        except RecordsRefusedError as exc:
            refused = exc
    if ready:
        try:
            target.push_many(ready)
        except RecordsRefusedError as exc:
            if refused is None:
                raise
            raise RecordsRefusedError(str(exc), [*refused.refused, *exc.refused]) from exc
        except BaseException as exc:
            if refused is None:
                raise
            raise RecordsRefusedError(str(exc), [*refused.refused, *ready]) from exc
    if refused is not None:
        raise refused
