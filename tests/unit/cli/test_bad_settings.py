"""Every command refuses a bad ``AICM_*`` variable with one line naming it, exit code 2
(through click's runner; tests/integration/test_bad_settings.py runs real processes)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from aicm_tasks.cli import main

COMMANDS = [
    ["dlq", "stats"],
    ["dlq", "list"],
    ["dlq", "show", "x"],
    ["dlq", "replay", "--all"],
    ["dlq", "purge", "--all", "--yes"],
    ["dlq", "export"],
    ["spool", "status"],
    ["spool", "drain"],
    ["status"],
    ["monitor", "--once"],
    ["costs"],
    ["budget"],
    ["import-sqlite", "queue.db"],
    ["serve"],
    ["demo"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_a_bad_setting_stops_the_command_with_one_line_and_exit_2(command: list[str]) -> None:
    result = CliRunner().invoke(main, command, env={"AICM_BATCH_SIZE": "5000"})
    assert result.exit_code == 2, result.output
    assert result.stderr == "Error: AICM_BATCH_SIZE must be at most 1000\n"
    assert result.stdout == ""


def test_a_misspelt_log_level_is_a_usage_error_not_a_traceback() -> None:
    result = CliRunner().invoke(main, ["--log-level", "loud", "dlq", "stats"])
    assert result.exit_code == 2
    assert "Invalid value for '--log-level'" in result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit)
