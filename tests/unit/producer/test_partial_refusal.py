"""A broker that takes some records of a publish and refuses the others (RabbitMQ's
nacks): exactly the refused ones are kept, by the publisher, the spool drain and
the SQLite import, so none is lost and none is sent twice."""

from __future__ import annotations

import contextlib
import functools
import json
import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path

import pytest

from aicm_tasks.broker.messages import decode
from aicm_tasks.errors import RecordsRefusedError
from aicm_tasks.producer.publisher import Publisher
from aicm_tasks.producer.record import Record, build_record
from aicm_tasks.producer.spool import Spool
from aicm_tasks.producer.sqlite_import import RabbitImportSink, import_records
from aicm_tasks.settings import Settings


class Refusing:
    """A target that refuses the messages of the response_ids in ``refuse``."""

    def __init__(self, refuse: Iterable[str] = (), fail_push: bool = False) -> None:
        self.refuse = set(refuse)
        self.fail_push = fail_push
        self.taken: list[str] = []
        self.scheduled: list[str] = []

    def _take(self, messages: Sequence[bytes], into: list[str]) -> None:
        refused = [m for m in messages if decode(m).response_id in self.refuse]
        into.extend(decode(m).response_id for m in messages if m not in refused)
        if refused:
            raise RecordsRefusedError(f"refused {len(refused)}", refused)

    def push(self, message: bytes) -> None:
        self.push_many([message])

    def push_many(self, messages: Sequence[bytes]) -> None:
        if self.fail_push:
            raise ConnectionResetError("the broker went away")
        self._take(messages, self.taken)

    def schedule(self, items: Iterable[tuple[float, bytes]]) -> None:
        self._take([message for _, message in items], self.scheduled)

    def answers(self) -> bool:
        return True


@functools.cache
def record(n: int) -> Record:
    return build_record("a::b", {"n": n}, response_id=f"r{n}")


def spooled(spool: Spool) -> list[str]:
    if not spool.path.exists():
        return []
    with contextlib.closing(sqlite3.connect(spool.path)) as conn:
        rows = conn.execute("SELECT message, claimed_by FROM records ORDER BY id").fetchall()
    assert all(claimed is None for _, claimed in rows)  # nothing left claimed
    return [decode(bytes(message)).response_id for message, _ in rows]


def publisher(tmp_path: Path, target: Refusing) -> Publisher:
    publisher = Publisher(Settings(spool_dir=tmp_path / "spool"))
    publisher._target = target
    publisher._start_drainer = lambda: None  # type: ignore[method-assign]
    return publisher


def test_track_many_spools_exactly_the_records_the_broker_refused(tmp_path: Path) -> None:
    target = Refusing(refuse={"r1", "r3"})
    published = publisher(tmp_path, target)
    published.publish_many([record(n) for n in range(5)])
    assert target.taken == ["r0", "r2", "r4"]
    assert published.spool is not None
    assert spooled(published.spool) == ["r1", "r3"]


def test_a_refused_single_record_is_spooled(tmp_path: Path) -> None:
    published = publisher(tmp_path, Refusing(refuse={"r0"}))
    published.publish(record(0))
    assert published.spool is not None
    assert spooled(published.spool) == ["r0"]


def test_a_drain_forgets_what_the_broker_took_and_keeps_what_it_refused(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 1 << 20)
    spool.append_many([record(n).message for n in range(6)])
    spool.append_many([record(9).message], due_epoch_s=4e9)  # due later: scheduled
    target = Refusing(refuse={"r2", "r5"})
    with pytest.raises(RecordsRefusedError):
        spool.drain(target)
    assert (target.taken, target.scheduled) == (["r0", "r1", "r3", "r4"], ["r9"])
    assert spooled(spool) == ["r2", "r5"]
    target.refuse.clear()
    assert spool.drain(target) == 2
    assert spooled(spool) == []


def test_a_failed_push_after_a_partly_refused_schedule_keeps_every_record_not_taken(
    tmp_path: Path,
) -> None:
    spool = Spool(tmp_path, 1 << 20)
    spool.append_many([record(n).message for n in range(3)])
    spool.append_many([record(n).message for n in (7, 8)], due_epoch_s=4e9)
    target = Refusing(refuse={"r8"}, fail_push=True)
    with pytest.raises(RecordsRefusedError):
        spool.drain(target)
    assert target.scheduled == ["r7"]
    assert sorted(spooled(spool)) == ["r0", "r1", "r2", "r8"]


def test_the_sqlite_import_moves_the_rows_taken_and_leaves_the_refused(tmp_path: Path) -> None:
    path = tmp_path / "queue.db"
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("CREATE TABLE queue (id INTEGER PRIMARY KEY, payload TEXT, status TEXT)")
        conn.executemany(
            "INSERT INTO queue (payload, status) VALUES (?, 'queued')",
            [
                (json.dumps({"service_key": "a::b", "response_id": f"s{n}", "payload": {}}),)
                for n in range(4)
            ],
        )
    target = Refusing(refuse={"s1"})
    with pytest.raises(RecordsRefusedError):
        import_records(path, RabbitImportSink(target))
    assert target.taken == ["s0", "s2", "s3"]
    target.refuse.clear()
    again = import_records(path, RabbitImportSink(target))
    # The file remembers the rows it moved: only the refused one is published again.
    assert (again.published, again.already_published) == (1, 0)
    assert target.taken == ["s0", "s2", "s3", "s1"]
    assert import_records(path, RabbitImportSink(target)).published == 0
