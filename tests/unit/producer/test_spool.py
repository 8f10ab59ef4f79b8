"""The spool over a real SQLite file in a temporary directory (no broker: a Sink)."""

from __future__ import annotations

import logging
import multiprocessing
import os
import sqlite3
import time
from pathlib import Path

import pytest

from aicm_tasks.errors import PublishError, SpoolFullError, SpoolWriteError
from aicm_tasks.producer.spool import CLAIM_EXPIRY_S, Spool, destination_of
from tests.support.spool_sink import BrokerGoneError, Sink, body


def test_appended_records_are_counted_and_drained_then_removed(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=10**7)
    for n in range(2500):
        spool.append(body(n))
    assert spool.status().records == 2500
    sink = Sink()
    assert spool.drain(sink) == 2500
    assert sink.pushed == [body(n) for n in range(2500)]
    assert spool.status().records == 0


def test_a_full_spool_refuses_with_a_clear_error_and_keeps_what_it_had(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=64 * 1024)
    kept = 0
    with pytest.raises(SpoolFullError, match="AICM_SPOOL_MAX_BYTES") as caught:
        while True:
            spool.append(body(kept))
            kept += 1
    assert isinstance(caught.value, PublishError) and kept > 100
    assert spool.status().records == kept
    with pytest.raises(SpoolFullError):
        spool.append(body(-1))
    sink = Sink()
    assert spool.drain(sink) == kept
    spool.append(body(-1))  # drained pages are reused
    assert spool.status().records == 1


def test_a_failed_drain_keeps_every_record_for_the_next_one(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=10**7)
    for n in range(3000):
        spool.append(body(n))
    failing = Sink(fail_after=1500)
    with pytest.raises(BrokerGoneError):
        spool.drain(failing)
    # The first chunk was taken and forgotten; the second failed and is free again.
    assert spool.status().records == 2000 and len(failing.pushed) == 1500
    sink = Sink()
    assert spool.drain(sink) == 2000
    assert set(failing.pushed) | set(sink.pushed) == {body(n) for n in range(3000)}


def test_records_appended_during_a_failing_drain_are_kept(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=10**7)
    for n in range(10):
        spool.append(body(n))

    class AppendsThenFails(Sink):
        def push_many(self, messages):
            for n in range(100, 110):  # the owner keeps spooling while we push
                spool.append(body(n))
            raise BrokerGoneError("broker gone again")

    with pytest.raises(BrokerGoneError):
        spool.drain(AppendsThenFails())
    sink = Sink()
    assert spool.drain(sink) == 20
    assert set(sink.pushed) == {body(n) for n in [*range(10), *range(100, 110)]}


def test_due_times_survive_the_spool(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=10**7)
    later = time.time() + 3600
    spool.append(body(1), due_epoch_s=later)
    spool.append(body(2), due_epoch_s=time.time() - 1)  # already due: the queue
    spool.append(body(3))
    sink = Sink()
    assert spool.drain(sink) == 3
    assert sink.scheduled == [(later, body(1))] and sink.pushed == [body(2), body(3)]


def test_each_destination_drains_only_its_own_records(tmp_path: Path) -> None:
    mine = Spool(tmp_path, max_bytes=10**7, destination=destination_of("q1", "p"))
    theirs = Spool(tmp_path, max_bytes=10**7, destination=destination_of("q2", "p"))
    mine.append(body(1))
    theirs.append(body(2))
    assert (mine.status().records, mine.status().other_records) == (1, 1)
    sink = Sink()
    assert mine.drain(sink) == 1 and sink.pushed == [body(1)]
    assert theirs.status().records == 1


def test_a_claim_left_by_a_dead_drainer_expires(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=10**7)
    spool.append(body(1))
    with sqlite3.connect(spool.path) as conn:  # a drainer that claimed it and died
        conn.execute("UPDATE records SET claimed_by = 'dead', claimed_at_s = ?", (time.time(),))
    assert spool.drain(Sink()) == 0 and spool.status().records == 1
    with sqlite3.connect(spool.path) as conn:
        conn.execute("UPDATE records SET claimed_at_s = ?", (time.time() - CLAIM_EXPIRY_S - 1,))
    sink = Sink()
    assert spool.drain(sink) == 1 and sink.pushed == [body(1)]


def test_old_format_files_are_imported_once_then_removed(tmp_path: Path) -> None:
    with_meta = b'{"api_key_alias":"team-a"}\n' + body(2)
    (tmp_path / "host-1-aaaa.spool").write_bytes(
        body(1) + b"\n" + with_meta.replace(b"\n", b"\x1e") + b"\n"
    )
    (tmp_path / "otherhost-2-bbbb.draining").write_bytes(body(3) + b"\n")
    spool = Spool(tmp_path, max_bytes=10**7)
    assert spool.status().records == 3
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("spool-")) == []
    sink = Sink()
    assert spool.drain(sink) == 3 and sink.pushed == [body(1), with_meta, body(3)]


def test_a_file_of_another_user_is_skipped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    if os.getuid() != 0:
        pytest.skip("chown to another uid needs root")
    foreign = tmp_path / "host-1-cccc.spool"
    foreign.write_bytes(body(9) + b"\n")
    os.chown(foreign, 12345, 12345)
    caplog.set_level(logging.WARNING, logger="aicm_tasks.producer.spool")
    spool = Spool(tmp_path, max_bytes=10**7)
    spool.append(body(1))
    assert spool.drain(Sink()) == 1
    assert foreign.exists() and "uid 12345" in caplog.text


def test_a_write_that_fails_raises_our_error_and_keeps_what_was_there(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=10**7)
    spool.append(body(1))
    (tmp_path / "file").write_bytes(b"")
    broken = Spool(tmp_path / "file" / "spool", max_bytes=10**7)  # a directory it cannot make
    with pytest.raises(SpoolWriteError, match="AICM_SPOOL_DIR"):
        broken.append(body(2))
    assert spool.status().records == 1


def _append_many(directory: str, start: int) -> None:
    spool = Spool(Path(directory), max_bytes=10**8)
    for n in range(start, start + 300):
        spool.append(body(n))


def test_processes_and_forked_children_append_safely(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=10**8)
    spool.append(body(-1))  # the parent opens its connection before forking
    context = multiprocessing.get_context("fork")
    children = [
        context.Process(target=_append_many, args=(str(tmp_path), 1000 * k)) for k in range(4)
    ]
    for child in children:
        child.start()
    spool.append(body(-2))  # the parent keeps appending while they do
    for child in children:
        child.join(60)
        assert child.exitcode == 0
    sink = Sink()
    spool.drain(sink)
    expected = {body(-1), body(-2)} | {
        body(n) for k in range(4) for n in range(1000 * k, 1000 * k + 300)
    }
    assert set(sink.pushed) == expected and len(sink.pushed) == len(expected)
