"""The SQLite-queue importer's logic, over fakeredis and the real Redis, on files
with the SDK's schema holding the awkward rows real queues can hold."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from pathlib import Path

import pytest
import redis

from aicm_tasks.broker.keys import Keys
from aicm_tasks.producer.sqlite_import import import_sqlite_queue

KEYS = Keys("aicm.tracking", "aicm")
SDK_SCHEMA = """CREATE TABLE queue (
    id INTEGER PRIMARY KEY AUTOINCREMENT, payload TEXT NOT NULL, status TEXT NOT NULL,
    retry_count INTEGER NOT NULL DEFAULT 0, scheduled_at REAL NOT NULL,
    created_at REAL NOT NULL, updated_at REAL NOT NULL)"""


def record(rid: str, **extra: object) -> str:
    return json.dumps(
        {
            "service_key": "a::b",
            "response_id": rid,
            "timestamp": "1700000000.5",
            "payload": {"n": 1},
            **extra,
        }
    )


def queue_file(path: Path, rows: list[tuple[str, str]]) -> Path:
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.execute(SDK_SCHEMA)
        conn.executemany(
            "INSERT INTO queue (payload, status, scheduled_at, created_at, updated_at) VALUES (?, ?, 0, 0, 0)",
            rows,
        )
    return path


def pushed(client: redis.Redis) -> list[str]:
    return [json.loads(m)["response_id"] for m in reversed(client.lrange(KEYS.queue, 0, -1))]


def left_in_queue(path: Path) -> list[int]:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return [row[0] for row in conn.execute("SELECT id FROM queue ORDER BY id")]


def test_valid_rows_are_published_in_order_across_chunks(
    any_redis: redis.Redis, tmp_path: Path
) -> None:
    path = queue_file(tmp_path / "q.db", [(record(f"r{n}"), "queued") for n in range(5)])
    report = import_sqlite_queue(path, any_redis, KEYS, chunk=2)
    assert report.published == 5 and report.found == {"queued": 5, "processing": 0, "failed": 0}
    assert pushed(any_redis) == [f"r{n}" for n in range(5)]
    assert any_redis.scard(KEYS.imported) == 5
    assert left_in_queue(path) == []


def test_invalid_rows_stay_in_the_file_with_a_reason(
    any_redis: redis.Redis, tmp_path: Path
) -> None:
    rows = [
        ("{not json", "queued"),
        ("[1, 2]", "failed"),
        (record("r1", api_key="sk-secret"), "queued"),
        (json.dumps({"service_key": "a::b", "payload": {}}), "queued"),
        (record("r2", payload=5), "processing"),
        (record("ok"), "queued"),
    ]
    path = queue_file(tmp_path / "q.db", rows)
    report = import_sqlite_queue(path, any_redis, KEYS)
    reasons = dict(report.invalid)
    assert set(reasons) == {1, 2, 3, 4, 5}
    assert "not JSON" in reasons[1] and "not a JSON object" in reasons[2]
    assert reasons[3].startswith("api_key:") and reasons[4].startswith("response_id:")
    assert reasons[5].startswith("usage:")
    assert pushed(any_redis) == ["ok"]
    assert left_in_queue(path) == [1, 2, 3, 4, 5]


def test_a_response_id_queued_twice_is_published_once(
    any_redis: redis.Redis, tmp_path: Path
) -> None:
    rows = [(record("same"), "failed"), (record("other"), "queued"), (record("same"), "queued")]
    path = queue_file(tmp_path / "q.db", rows)
    dry = import_sqlite_queue(path, any_redis, KEYS, dry_run=True, chunk=1)
    assert (dry.published, dry.already_published) == (2, 1)
    report = import_sqlite_queue(path, any_redis, KEYS, chunk=1)
    assert (report.published, report.already_published) == (2, 1)
    assert pushed(any_redis) == ["same", "other"]
    assert left_in_queue(path) == []


def test_delivered_rows_of_other_statuses_are_not_touched(
    any_redis: redis.Redis, tmp_path: Path
) -> None:
    path = queue_file(tmp_path / "q.db", [(record("x"), "something-else"), (record("y"), "queued")])
    report = import_sqlite_queue(path, any_redis, KEYS)
    assert report.published == 1 and pushed(any_redis) == ["y"]
    assert left_in_queue(path) == [1]


def test_a_dry_run_opens_the_file_read_only(any_redis: redis.Redis, tmp_path: Path) -> None:
    path = queue_file(tmp_path / "q.db", [(record("r"), "queued")])
    path.chmod(0o444)
    try:
        report = import_sqlite_queue(path, any_redis, KEYS, dry_run=True)
    finally:
        path.chmod(0o644)
    assert report.published == 1 and pushed(any_redis) == []
    with contextlib.closing(sqlite3.connect(path)) as conn:
        tables = {
            row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
        }
    assert "aicm_tasks_imported" not in tables


@pytest.mark.parametrize("chunk", [1, 500])
def test_the_broker_not_answering_leaves_the_file_as_it_was(tmp_path: Path, chunk: int) -> None:
    path = queue_file(tmp_path / "q.db", [(record(f"r{n}"), "queued") for n in range(3)])
    dead = redis.Redis(port=1, socket_connect_timeout=0.5)
    with pytest.raises(redis.ConnectionError):
        import_sqlite_queue(path, dead, KEYS, chunk=chunk)
    assert left_in_queue(path) == [1, 2, 3]
