"""Spool files of earlier versions (one line per record), imported once into the database.

Earlier versions wrote ``<host>-<pid>-<nonce>.spool`` files, one record per line
(a message's own newline written as ``\\x1e``), and renamed one to ``.draining``
while draining it. A user upgrading must not lose them, and a process of the
old version may still be appending while a new one starts (a rolling restart),
so a file is taken as the old drainer took it: renamed to ``.draining`` (the old
writer notices the rename under its ``flock`` and starts a new file), locked
(waiting for a writer mid-append), read, its records inserted in one
transaction, and only then removed. A crash between the insert and the removal
imports the file again: duplicates with the same ``response_id``, never a loss.

Files of another user, or that cannot be read, are skipped with a warning and
block nothing.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from collections.abc import Callable, Sequence
from pathlib import Path

#: Suffixes of the old line files: one a process appended to, one being drained.
ACTIVE_SUFFIX = ".spool"
DRAINING_SUFFIX = ".draining"

#: Stood for a newline inside a message in the old line format.
_LINE_BREAK_STANDIN = b"\x1e"


def legacy_files(directory: Path) -> list[Path]:
    """Old-format spool files in ``directory``, oldest name first."""
    try:
        entries = list(directory.iterdir())
    except OSError:
        return []
    return sorted(p for p in entries if p.suffix in (ACTIVE_SUFFIX, DRAINING_SUFFIX))


def import_legacy_files(
    directory: Path,
    insert: Callable[[Sequence[bytes]], None],
    skip: Callable[[Path, str], None],
) -> int:
    """Insert the records of every old file we may take, then remove it; returns how many.

    ``insert`` stores messages in one transaction (raising leaves the file in
    place); ``skip`` is told about each file left alone and why.
    """
    imported = 0
    for path in legacy_files(directory):
        why = not_ours(path)
        if why:
            skip(path, why)
            continue
        claimed = _claim(path)
        if claimed is None:
            continue
        try:
            with open(claimed, "rb") as handle:
                fcntl.flock(handle, fcntl.LOCK_SH)  # an old writer may be mid-append
                data = handle.read()
        except OSError as exc:
            skip(claimed, f"cannot be read ({exc})")
            continue
        messages = [from_line(line) for line in data.split(b"\n") if line]
        if messages:
            insert(messages)
        with contextlib.suppress(FileNotFoundError):
            claimed.unlink()
        imported += len(messages)
    return imported


def not_ours(path: Path) -> str:
    """Why an old file must be left alone, or '' when we may import it."""
    try:
        info = path.stat()
    except FileNotFoundError:
        return ""
    if info.st_uid != os.getuid():
        return f"owned by uid {info.st_uid}, not by this user"
    if not os.access(path, os.R_OK):
        return "not readable by this user"
    return ""


def _owner_alive(path: Path) -> bool:
    """Whether the old-version process that wrote ``path`` still runs on this host."""
    parts = path.stem.rsplit("-", 2)
    if len(parts) != 3 or parts[0] != socket.gethostname():
        return False
    try:
        pid = int(parts[1])
        os.kill(pid, 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return pid != os.getpid()


def _claim(path: Path) -> Path | None:
    if path.suffix == DRAINING_SUFFIX:
        if _owner_alive(path):
            return None  # its old-version owner may be draining it now; taken once it exits
        return path
    target = path.with_suffix(DRAINING_SUFFIX)
    try:
        path.rename(target)  # atomic: one taker wins; an old writer starts a new file
    except FileNotFoundError:
        return None
    return target


def from_line(line: bytes) -> bytes:
    """The message an old spool line holds."""
    return line.replace(_LINE_BREAK_STANDIN, b"\n")
