"""The CLI through real subprocesses and click's runner, over the real Redis."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner

from aicm_tasks.broker.keys import Keys
from aicm_tasks.broker.messages import decode
from aicm_tasks.broker.records import RecordStore
from aicm_tasks.cli import main
from aicm_tasks.devtools.processes import free_port
from aicm_tasks.producer.record import build_record
from aicm_tasks.producer.spool import Spool
from aicm_tasks.worker.delivery import plan
from aicm_tasks.worker.outcomes import BatchVerdict, RecordResult, VerdictKind
from aicm_tasks.worker.retry import BackoffPolicy
from tests.conftest import TEST_REDIS_URL
from tests.support.cli import run_cli
from tests.support.delivery import deliver

pytestmark = pytest.mark.integration
KEYS = Keys("aicm.tracking", "aicm")


def test_demo_runs_the_pipeline_and_reports_every_record(real_redis: redis.Redis) -> None:
    result = run_cli("demo", "--records", "600", "--json", env={"AICM_BROKER_URL": TEST_REDIS_URL})
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(result.stdout)
    dead = sum(figures["dead_lettered"].values())
    assert figures["published"] == 600
    assert figures["delivered"] + dead == 600
    assert figures["unique_response_ids_at_server"] == figures["delivered"]
    assert figures["dead_lettered"].get("service_key_unknown", 0) > 0
    assert figures["records_per_s"] > 0 and figures["private_redis"] is False
    assert real_redis.keys("aicm-demo-*") == []  # it cleaned up after itself


def test_demo_starts_a_private_redis_when_none_answers() -> None:
    closed = f"redis://127.0.0.1:{free_port()}/0"
    result = run_cli("demo", "--records", "200", "--json", env={"AICM_BROKER_URL": closed})
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(result.stdout)
    assert figures["private_redis"] is True
    assert figures["delivered"] + sum(figures["dead_lettered"].values()) == 200


def _dead_letter(client: redis.Redis, rid: str, status: str, service: str) -> None:
    store = RecordStore(client, KEYS)
    store.push(build_record(service, {"n": 1}, response_id=rid).body)
    batch = KEYS.batch("cli", abs(hash(rid)) % 100_000)
    fetched = store.fetch("cli", batch, 10, 30)
    assert fetched is not None
    items = [decode(m) for m in fetched]
    verdict = BatchVerdict(
        VerdictKind.RESULTS, "200", 200, results={rid: RecordResult(status, ("nope",))}
    )
    resolution, _ = plan(
        deliver(items, lambda body: verdict)[0], BackoffPolicy(), auth_retry_interval_s=1
    )
    store.resolve("cli", batch, resolution)


@pytest.fixture
def cli_env(real_redis: redis.Redis) -> dict[str, str]:
    _dead_letter(real_redis, "u1", "service_key_unknown", "acme::x")
    _dead_letter(real_redis, "u2", "service_key_unknown", "acme::y")
    _dead_letter(real_redis, "e1", "error", "openai::gpt-4o")
    return {"AICM_BROKER_URL": TEST_REDIS_URL}


def test_dlq_commands_list_show_and_stats_as_json(cli_env: dict[str, str]) -> None:
    runner = CliRunner()
    stats = json.loads(runner.invoke(main, ["dlq", "stats", "--json"], env=cli_env).output)
    assert stats["total"] == 3 and stats["by_reason"] == {"error": 1, "service_key_unknown": 2}
    listed = json.loads(
        runner.invoke(
            main, ["dlq", "list", "--reason", "service_key_unknown", "--json"], env=cli_env
        ).output
    )
    assert {e["id"] for e in listed} == {"u1", "u2"}
    shown = json.loads(runner.invoke(main, ["dlq", "show", "e1", "--json"], env=cli_env).output)
    assert shown["record"]["service_key"] == "openai::gpt-4o" and shown["errors"] == ["nope"]
    missing = runner.invoke(main, ["dlq", "show", "nope"], env=cli_env)
    assert missing.exit_code != 0
    assert "no dead letter has an id that is or begins with 'nope'" in missing.output
    table = runner.invoke(main, ["dlq", "list"], env=cli_env)
    assert table.exit_code == 0 and "u1" in table.output


def test_dlq_replay_dry_run_then_for_real(cli_env: dict[str, str], real_redis: redis.Redis) -> None:
    runner = CliRunner()
    dry = json.loads(
        runner.invoke(
            main, ["dlq", "replay", "--service-key", "acme::x", "--dry-run", "--json"], env=cli_env
        ).output
    )
    assert dry == {"dry_run": True, "replayed": 1, "ids": ["u1"]}
    assert real_redis.llen(KEYS.queue) == 0
    done = json.loads(runner.invoke(main, ["dlq", "replay", "u1", "--json"], env=cli_env).output)
    assert done["ids"] == ["u1"] and real_redis.llen(KEYS.queue) == 1
    nothing = runner.invoke(main, ["dlq", "replay"], env=cli_env)
    assert nothing.exit_code == 2 and "give ids, --reason, --service-key or --all" in nothing.output


def test_dlq_purge_asks_for_confirmation_unless_yes(cli_env: dict[str, str]) -> None:
    runner = CliRunner()
    refused = runner.invoke(main, ["dlq", "purge", "--all"], env=cli_env, input="n\n")
    assert refused.exit_code != 0
    assert (
        json.loads(runner.invoke(main, ["dlq", "stats", "--json"], env=cli_env).output)["total"]
        == 3
    )
    accepted = runner.invoke(main, ["dlq", "purge", "--reason", "error"], env=cli_env, input="y\n")
    assert accepted.exit_code == 0 and "purged 1" in accepted.output
    forced = json.loads(
        runner.invoke(main, ["dlq", "purge", "--all", "--yes", "--json"], env=cli_env).output
    )
    assert forced == {"purged": 2}


def test_dlq_export_writes_json_lines_to_stdout_and_to_a_file(
    cli_env: dict[str, str], tmp_path
) -> None:
    result = run_cli("dlq", "export", env=cli_env)
    assert result.returncode == 0, result.stderr
    assert {json.loads(line)["id"] for line in result.stdout.splitlines()} == {"u1", "u2", "e1"}
    out = tmp_path / "dead.jsonl"
    summary = json.loads(
        CliRunner()
        .invoke(
            main,
            ["dlq", "export", "--reason", "error", "--output", str(out), "--json"],
            env=cli_env,
        )
        .output
    )
    assert summary["exported"] == 1
    assert json.loads(out.read_text())["id"] == "e1"


@pytest.mark.parametrize(
    "command",
    [("status", "--json"), ("monitor", "--once"), ("dlq", "stats"), ("spool", "drain")],
    ids=" ".join,
)
@pytest.mark.parametrize(
    "password", ["pa55/wo#rd?x", "s3cret-word", "p@ss:word"], ids=["unencoded", "plain", "at"]
)
def test_no_cli_command_shows_the_broker_password(
    command: tuple[str, ...], password: str, tmp_path: Path
) -> None:
    # Nothing listens on the port: each command fails and says why, or the URL
    # is refused when loaded (unencoded / # ?); neither may show the password.
    url = f"redis://aicm:{password}@127.0.0.1:{free_port()}/0"
    spooled = Spool(tmp_path / "spool", 1024 * 1024)  # so that `spool drain` connects
    spooled.append(build_record("openai::gpt-4o-mini", {"input_tokens": 1}).message)
    env = {"AICM_BROKER_URL": url, "AICM_SPOOL_DIR": str(tmp_path / "spool")}
    result = run_cli(*command, env=env, timeout_s=60)
    said = result.stdout + result.stderr
    assert result.returncode != 0, said
    assert "127.0.0.1" in said or "not a usable broker URL" in said, said
    assert password not in said
    for piece in ("pa55", "wo#rd", "s3cret", "ss:word"):
        assert piece not in said, said


def test_every_dlq_and_spool_json_output_parses(cli_env: dict[str, str], tmp_path: Path) -> None:
    runner = CliRunner()
    env = {**cli_env, "AICM_SPOOL_DIR": str(tmp_path / "spool")}
    out = tmp_path / "dead.jsonl"
    documents = {}
    for command in (
        ["dlq", "stats"],
        ["dlq", "list"],
        ["dlq", "show", "e"],  # a unique prefix of e1
        ["dlq", "replay", "--all", "--dry-run"],
        ["dlq", "export", "--all", "--output", str(out)],
        ["dlq", "purge", "--reason", "error", "--yes"],
        ["spool", "status"],
        ["spool", "drain"],
    ):
        result = runner.invoke(main, [*command, "--json"], env=env)
        assert result.exit_code == 0, (command, result.output)
        documents[" ".join(command[:2])] = json.loads(result.output)
    assert documents["dlq show"]["id"] == "e1"
    assert documents["dlq purge"] == {"purged": 1}
    assert documents["dlq export"] == {"exported": 3, "output": str(out)}
    assert documents["spool drain"] == {"pushed": 0}
    # Without --output the export is JSON Lines on stdout already: each line parses.
    lines = runner.invoke(main, ["dlq", "export", "--json"], env=env).output.splitlines()
    assert sorted(json.loads(line)["id"] for line in lines) == ["u1", "u2"]
