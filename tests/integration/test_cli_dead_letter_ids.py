"""``dlq show`` / ``dlq replay`` take a unique prefix of a response_id, and ``dlq list``
shows whole ids when its output is not a terminal: over the real Redis."""

from __future__ import annotations

import importlib
import json

import pytest
import redis
from click.testing import CliRunner

from aicm_tasks.cli import main
from tests.conftest import TEST_REDIS_URL
from tests.integration.test_cli import KEYS, _dead_letter
from tests.support.cli import run_cli

pytestmark = pytest.mark.integration
# By module path: the package ``aicm_tasks.cli`` binds the name ``dlq`` to the command.
dlq_cli = importlib.import_module("aicm_tasks.cli.dlq")

LONG_A = "5b0e11aa" + "a" * 56 + "-first"
LONG_B = "5b0e22bb" + "b" * 56 + "-second"


@pytest.fixture
def ids_env(real_redis: redis.Redis) -> dict[str, str]:
    _dead_letter(real_redis, LONG_A, "service_key_unknown", "acme::x")
    _dead_letter(real_redis, LONG_B, "error", "acme::y")
    _dead_letter(real_redis, "77c1", "error", "acme::y")
    _dead_letter(real_redis, "77c1abcd", "error", "acme::y")
    return {"AICM_BROKER_URL": TEST_REDIS_URL}


def test_show_takes_a_unique_prefix(ids_env: dict[str, str]) -> None:
    result = CliRunner().invoke(main, ["dlq", "show", "5b0e2", "--json"], env=ids_env)
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["id"] == LONG_B


def test_an_exact_id_is_shown_even_when_it_begins_another(ids_env: dict[str, str]) -> None:
    result = CliRunner().invoke(main, ["dlq", "show", "77c1", "--json"], env=ids_env)
    assert json.loads(result.output)["id"] == "77c1"


def test_an_ambiguous_prefix_fails_listing_the_candidates(ids_env: dict[str, str]) -> None:
    result = run_cli("dlq", "show", "5b0e", env=ids_env, timeout_s=60)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.strip() == (
        f"Error: '5b0e' begins 2 dead letter ids ({LONG_A}, {LONG_B}): give more of the id"
    )


def test_a_prefix_that_matches_nothing_fails_saying_so(ids_env: dict[str, str]) -> None:
    for command in (["dlq", "show", "ffff"], ["dlq", "replay", "ffff"]):
        result = CliRunner().invoke(main, command, env=ids_env)
        assert result.exit_code == 1
        assert "no dead letter has an id that is or begins with 'ffff'" in result.output


def test_replay_takes_prefixes_and_republishes_the_full_ids(
    ids_env: dict[str, str], real_redis: redis.Redis
) -> None:
    runner = CliRunner()
    ambiguous = runner.invoke(main, ["dlq", "replay", "5b0e", "--json"], env=ids_env)
    assert ambiguous.exit_code == 1 and "give more of the id" in ambiguous.output
    assert real_redis.llen(KEYS.queue) == 0  # nothing replayed when one id is ambiguous
    done = runner.invoke(main, ["dlq", "replay", "5b0e1", "77c1a", "--json"], env=ids_env)
    assert done.exit_code == 0, done.output
    assert json.loads(done.output) == {
        "dry_run": False,
        "replayed": 2,
        "ids": [LONG_A, "77c1abcd"],
    }
    assert real_redis.llen(KEYS.queue) == 2
    assert real_redis.hexists(KEYS.dlq, "77c1")  # the exact id it begins stays


def test_list_shows_whole_ids_when_piped(ids_env: dict[str, str]) -> None:
    # A real subprocess with its stdout a pipe, as `aicm-tasks dlq list | grep ...`.
    result = run_cli("dlq", "list", env={**ids_env, "COLUMNS": "60"}, timeout_s=60)
    assert result.returncode == 0, result.stderr
    for rid in (LONG_A, LONG_B, "77c1abcd"):
        assert rid in result.stdout
    assert "…" not in result.stdout


def test_list_in_a_narrow_terminal_cuts_ids_unless_wide(
    ids_env: dict[str, str], real_redis: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dlq_cli, "to_terminal", lambda: True)
    entry = json.loads(real_redis.hget(KEYS.dlq, "77c1") or b"{}")
    entry["errors"] = ["x" * 150 + " the end"]
    real_redis.hset(KEYS.dlq, "77c1", json.dumps(entry))
    env = {**ids_env, "COLUMNS": "100"}
    cut = CliRunner().invoke(main, ["dlq", "list"], env=env)
    assert cut.exit_code == 0, cut.output
    assert LONG_A not in cut.output and "…" in cut.output
    wide = CliRunner().invoke(main, ["dlq", "list", "--wide"], env=env)
    assert wide.exit_code == 0, wide.output
    assert LONG_A in wide.output and "x" * 150 + " the end" in wide.output
