"""The producer's local spool: where a validated record waits when the broker is down.

When publishing fails, :class:`Spool` appends the record (already validated,
with its ``response_id``) as one line to a file of this process in
``AICM_SPOOL_DIR``, and the ``track`` call succeeds. A background thread of the
same process pushes spooled records back to the broker once it answers (checked
every few seconds), and ``aicm-tasks spool drain`` does the same by hand.

Hand-written rather than a library because the constraints are specific: one
file per process (no lock shared between web workers), ``flock`` per append so
a drainer never reads a half-written line, claim-by-rename so two drainers never
take the same file, and files of dead processes taken over by anyone.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from aicm_tasks.errors import SpoolFullError

logger = logging.getLogger(__name__)

#: Suffix of a file a process appends to; ``.draining`` marks one being drained.
ACTIVE_SUFFIX = ".spool"
DRAINING_SUFFIX = ".draining"
#: How often the drain thread looks for the broker, in seconds.
DRAIN_INTERVAL_S = 5.0
#: Records pushed per broker round trip when draining.
DRAIN_CHUNK = 1000


@dataclass(frozen=True, slots=True)
class SpoolStatus:
    """What the spool holds right now."""

    directory: str
    files: int
    records: int
    bytes: int


class Spool:
    """Append-only spool files of one directory, safe across processes and forks."""

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._pid = -1
        self._path: Path | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    # -- writing -------------------------------------------------------------------
    def append(self, message: bytes) -> None:
        """Append one message; raises :class:`SpoolFullError` when over ``max_bytes``."""
        line = to_line(message)
        with self._lock:
            if self.size_bytes() + len(line) + 1 > self.max_bytes:
                raise SpoolFullError(
                    f"the spool in {self.directory} is full ({self.max_bytes} bytes, "
                    "AICM_SPOOL_MAX_BYTES) and the broker does not answer; the record was not kept"
                )
            path = self._own_path()
            _append_locked(path, line + b"\n")

    def _own_path(self) -> Path:
        if self._pid != os.getpid() or self._path is None:
            # A new process (or a forked child): a file of its own.
            self._pid = os.getpid()
            self._thread = None
            self.directory.mkdir(parents=True, exist_ok=True)
            name = f"{socket.gethostname()}-{self._pid}-{uuid.uuid4().hex[:8]}{ACTIVE_SUFFIX}"
            self._path = self.directory / name
        return self._path

    # -- reading -------------------------------------------------------------------
    def status(self) -> SpoolStatus:
        """Files, records and bytes currently spooled."""
        files = self._files()
        records = 0
        size = 0
        for path in files:
            with contextlib.suppress(FileNotFoundError):
                data = path.read_bytes()
                size += len(data)
                records += data.count(b"\n")
        return SpoolStatus(str(self.directory), len(files), records, size)

    def size_bytes(self) -> int:
        total = 0
        for path in self._files():
            with contextlib.suppress(FileNotFoundError):
                total += path.stat().st_size
        return total

    def _files(self) -> list[Path]:
        if not self.directory.is_dir():
            return []
        return sorted(
            p for p in self.directory.iterdir() if p.suffix in (ACTIVE_SUFFIX, DRAINING_SUFFIX)
        )

    # -- draining ------------------------------------------------------------------
    def drain(
        self, push: Callable[[Sequence[bytes]], None], *, only_own_and_dead: bool = True
    ) -> int:
        """Push spooled records to the broker; returns how many were pushed.

        Takes this process's files and those of processes no longer alive on this
        host (or, with ``only_own_and_dead=False``, every file: for the CLI).
        A file is removed only after all its records were pushed; if pushing
        fails, the file goes back and the error propagates.
        """
        pushed = 0
        for path in self._files():
            if only_own_and_dead and not self._mine_or_orphaned(path):
                continue
            claimed = self._claim(path)
            if claimed is None:
                continue
            with open(claimed, "rb") as handle:
                fcntl.flock(handle, fcntl.LOCK_EX)  # wait for a writer mid-append
                messages = [from_line(line) for line in handle.read().split(b"\n") if line]
            try:
                for start in range(0, len(messages), DRAIN_CHUNK):
                    push(messages[start : start + DRAIN_CHUNK])
            except Exception:
                # Records already pushed will be pushed again: same response_id.
                with contextlib.suppress(OSError):
                    claimed.rename(claimed.with_suffix(ACTIVE_SUFFIX))
                raise
            claimed.unlink()
            pushed += len(messages)
        if pushed:
            logger.warning("pushed %d spooled records to the broker", pushed)
        return pushed

    def _claim(self, path: Path) -> Path | None:
        if path.suffix == DRAINING_SUFFIX:
            return path  # a drain that died half-way; its owner is gone (checked above)
        target = path.with_suffix(DRAINING_SUFFIX)
        try:
            path.rename(target)  # atomic: only one drainer wins
        except FileNotFoundError:
            return None
        return target

    def _mine_or_orphaned(self, path: Path) -> bool:
        parts = path.stem.rsplit("-", 2)
        if len(parts) != 3 or parts[0] != socket.gethostname():
            return False
        try:
            pid = int(parts[1])
        except ValueError:
            return False
        if pid == os.getpid():
            return True
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False

    # -- the background drainer -----------------------------------------------------
    def ensure_drainer(
        self, push: Callable[[Sequence[bytes]], None], broker_ok: Callable[[], bool]
    ) -> None:
        """Start this process's drain thread unless it runs already."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive() and self._pid == os.getpid():
                return
            self._pid = os.getpid()
            self._stop.clear()
            self._thread = threading.Thread(
                target=self._drain_loop,
                args=(push, broker_ok),
                name="aicm-spool-drainer",
                daemon=True,
            )
            self._thread.start()

    def stop_drainer(self) -> None:
        self._stop.set()

    def _drain_loop(
        self, push: Callable[[Sequence[bytes]], None], broker_ok: Callable[[], bool]
    ) -> None:
        while not self._stop.wait(DRAIN_INTERVAL_S):
            try:
                if not any(self._mine_or_orphaned(p) for p in self._files()):
                    continue
                if broker_ok():
                    self.drain(push)
            except Exception as exc:
                logger.warning("spooled records not pushed yet: %s", exc)


def _append_locked(path: Path, data: bytes) -> None:
    """Append ``data`` under an exclusive lock, to the file ``path`` names now.

    If a drainer renamed the file between our open and our lock, the inode we
    hold is no longer at ``path``: open again, so the line lands in a file that
    will be drained, never in one already read.
    """
    while True:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                os.write(fd, data)
                return
        finally:
            os.close(fd)


#: Stands for the newline between a message's metadata line and its record in a
#: spool file, whose records are one per line. JSON never holds a raw control
#: character, so the byte cannot occur in a message otherwise.
_LINE_BREAK_STANDIN = b"\x1e"


def to_line(message: bytes) -> bytes:
    """A message as one spool line."""
    if _LINE_BREAK_STANDIN in message:
        raise ValueError("a broker message never holds a raw \\x1e byte")
    return message.replace(b"\n", _LINE_BREAK_STANDIN)


def from_line(line: bytes) -> bytes:
    """The message a spool line holds."""
    return line.replace(_LINE_BREAK_STANDIN, b"\n")
