from __future__ import annotations

import multiprocessing
import os
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from aicm_tasks.errors import PublishError, SpoolFullError
from aicm_tasks.record import build_record
from aicm_tasks.spool import Spool


def body(n: int) -> bytes:
    return build_record("a::b", {"n": n}, response_id=f"r{n}", timestamp=1732270000).body


class Sink:
    def __init__(self, fail_after: int | None = None) -> None:
        self.pushed: list[bytes] = []
        self.fail_after = fail_after

    def __call__(self, messages: Sequence[bytes]) -> None:
        if self.fail_after is not None and len(self.pushed) + len(messages) > self.fail_after:
            raise ConnectionError("broker gone again")
        self.pushed.extend(messages)


def test_appended_records_are_counted_and_drained_then_removed(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=10**6)
    for n in range(2500):
        spool.append(body(n))
    status = spool.status()
    assert status.records == 2500 and status.files == 1
    sink = Sink()
    assert spool.drain(sink) == 2500
    assert sink.pushed == [body(n) for n in range(2500)]
    assert spool.status().records == 0 and list(tmp_path.iterdir()) == []


def test_a_full_spool_refuses_with_a_clear_error_and_writes_nothing(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1024)
    while True:
        try:
            spool.append(body(1))
        except SpoolFullError as exc:
            assert "full" in str(exc) and isinstance(exc, PublishError)
            break
    before = spool.status()
    with pytest.raises(SpoolFullError):
        spool.append(body(2))
    assert spool.status() == before
    assert before.bytes <= 1024


def test_a_failed_drain_keeps_the_file_for_the_next_one(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=10**6)
    for n in range(3000):
        spool.append(body(n))
    with pytest.raises(ConnectionError):
        spool.drain(Sink(fail_after=1500))
    assert spool.status().records == 3000  # nothing dropped; pushed ones go again (same ids)
    sink = Sink()
    assert spool.drain(sink) == 3000


def test_files_of_live_processes_are_left_to_them_and_of_dead_ones_taken(tmp_path: Path) -> None:
    host = socket.gethostname()
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    dead_pid = int(dead.stdout)
    (tmp_path / f"{host}-{dead_pid}-aaaa.spool").write_bytes(body(1) + b"\n")
    (tmp_path / f"{host}-1-bbbb.spool").write_bytes(body(2) + b"\n")  # pid 1 is alive
    sink = Sink()
    Spool(tmp_path, max_bytes=10**6).drain(sink)
    assert sink.pushed == [body(1)]
    everything = Sink()
    Spool(tmp_path, max_bytes=10**6).drain(everything, only_own_and_dead=False)
    assert everything.pushed == [body(2)]


def _append_many(directory: str, start: int) -> None:
    spool = Spool(Path(directory), max_bytes=10**8)
    for n in range(start, start + 500):
        spool.append(body(n))


def test_several_processes_and_forked_children_append_safely(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=10**8)
    spool.append(body(-1))  # the parent opens its file before forking
    context = multiprocessing.get_context("fork")
    children = [
        context.Process(target=_append_many, args=(str(tmp_path), 1000 * k)) for k in range(4)
    ]
    for child in children:
        child.start()
    for child in children:
        child.join(30)
        assert child.exitcode == 0
    assert spool.status().files == 5
    sink = Sink()
    Spool(tmp_path, max_bytes=10**8).drain(sink, only_own_and_dead=False)
    expected = {body(-1)} | {body(n) for k in range(4) for n in range(1000 * k, 1000 * k + 500)}
    assert set(sink.pushed) == expected and len(sink.pushed) == len(expected)
    assert os.listdir(tmp_path) == []
