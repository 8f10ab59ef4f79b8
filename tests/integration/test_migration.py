"""``aicm-tasks import-sqlite`` on a queue file written by the real SDK, delivered
by a real worker to the real local server."""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from aicm_tasks.cli import main
from aicm_tasks.producer.record import normalize_timestamp
from tests.support.cli import run_cli
from tests.support.pipeline import Pipeline
from tests.support.sdk_queue import write_sdk_queue

pytestmark = pytest.mark.integration


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def import_json(pipeline: Pipeline, path: Path, *flags: str) -> dict:
    done = run_cli("import-sqlite", str(path), "--json", *flags, env=pipeline.cli_env())
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_import_sqlite_moves_the_sdk_queue_once_with_its_response_ids(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    sdk = write_sdk_queue(tmp_path / "sdk")
    assert sdk.statuses() == {"failed": 2, "queued": 4, "processing": 2}
    backup = tmp_path / "backup.db"
    shutil.copy(sdk.path, backup)
    expected = {
        rid: args
        for by_id in sdk.records.values()
        for rid, args in by_id.items()
        if rid != "queued-api-id"
    }

    # --dry-run: the counts, and nothing changes anywhere.
    before = digest(sdk.path)
    dry = import_json(pipeline, sdk.path, "--dry-run")
    assert dry["found"] == {"queued": 4, "processing": 2, "failed": 2}
    assert (dry["published"], dry["already_published"], dry["invalid"]) == (7, 0, 1)
    assert digest(sdk.path) == before
    assert pipeline.client.llen(pipeline.settings.queue) == 0

    # The real run publishes every valid record, once; the invalid one stays.
    first = import_json(pipeline, sdk.path)
    assert (first["published"], first["already_published"], first["invalid"]) == (7, 0, 1)
    assert first["invalid_rows"][0]["reason"].startswith("service_key:")
    assert pipeline.client.llen(pipeline.settings.queue) == 7
    assert sdk.statuses() == {"queued": 1}
    with contextlib.closing(sqlite3.connect(sdk.path)) as conn:
        moved = dict(conn.execute("SELECT response_id, status FROM aicm_tasks_imported"))
    assert moved == {rid: rid.split("-")[0] for rid in expected}

    # Twice: nothing left to publish.
    again = import_json(pipeline, sdk.path)
    assert (again["published"], again["invalid"]) == (0, 1)
    # A copy taken before the move (or a run that died between Redis and the
    # file): the broker remembers what was published.
    copy = import_json(pipeline, backup)
    assert (copy["published"], copy["already_published"]) == (0, 7)
    assert pipeline.client.llen(pipeline.settings.queue) == 7

    pipeline.start_worker()
    pipeline.wait_settled(7)
    events = {
        e["response_id"]: e
        for e in pipeline.server.get("/api/v1/usage/events?limit=1000")["events"]
    }
    assert set(events) == set(expected)
    assert pipeline.server.stats()["received"] == 7
    for rid, args in expected.items():
        event = events[rid]
        assert event["payload"] == args["usage"]
        assert event["customer_key"] == args["customer_key"]
        assert event["context"] == args["context"]
        assert event["timestamp"] == float(normalize_timestamp(args["timestamp"]))


def test_import_sqlite_reports_in_words(pipeline: Pipeline, tmp_path: Path) -> None:
    sdk = write_sdk_queue(tmp_path / "sdk", failed=1, queued=1, processing=1)
    runner = CliRunner()
    dry = runner.invoke(main, ["import-sqlite", str(sdk.path), "--dry-run"], env=pipeline.cli_env())
    assert dry.exit_code == 0, dry.output
    assert "4 records to move (2 queued, 1 processing, 1 failed)" in dry.output
    assert "would publish 3, already published 0, invalid 1" in dry.output
    assert "row 3 left in the file: service_key:" in dry.output
    assert "nothing was published" in dry.output
    done = runner.invoke(main, ["import-sqlite", str(sdk.path)], env=pipeline.cli_env())
    assert "published 3, already published 0, invalid 1" in done.output


def test_import_sqlite_refuses_what_is_not_an_sdk_queue(pipeline: Pipeline, tmp_path: Path) -> None:
    runner = CliRunner()
    missing = runner.invoke(
        main, ["import-sqlite", str(tmp_path / "nope.db")], env=pipeline.cli_env()
    )
    assert missing.exit_code == 1 and "does not exist" in missing.output
    assert not (tmp_path / "nope.db").exists()
    other = tmp_path / "other.db"
    with contextlib.closing(sqlite3.connect(other)) as conn:
        conn.execute("CREATE TABLE events (id INTEGER)")
    wrong = runner.invoke(main, ["import-sqlite", str(other)], env=pipeline.cli_env())
    assert wrong.exit_code == 1 and "no SDK queue table" in wrong.output
    text = tmp_path / "notes.txt"
    text.write_text("not a database at all, just some text that is long enough" * 20)
    garbage = runner.invoke(main, ["import-sqlite", str(text)], env=pipeline.cli_env())
    assert garbage.exit_code == 1 and "not a SQLite database" in garbage.output
