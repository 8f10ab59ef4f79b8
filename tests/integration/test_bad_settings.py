"""A bad setting is one line naming the variable, from every entry point, in real processes.

The CLI (``aicm-tasks``), the worker (``celery -A aicm_tasks worker``) and the
library (``import aicm_tasks`` then ``track.delay``) each read the settings
somewhere else; each must say ``AICM_BATCH_SIZE must be at most 1000`` and no
traceback, and the unknown-variable warning comes once per process.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import TEST_REDIS_URL
from tests.support.cli import run_cli

pytestmark = pytest.mark.integration

BAD = {"AICM_BATCH_SIZE": "5000"}
LINE = "AICM_BATCH_SIZE must be at most 1000"


def _env(**extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("AICM_")}
    return {**base, "AICM_BROKER_URL": TEST_REDIS_URL, **extra}


def _run(*command: str, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(command), env=_env(**extra), capture_output=True, text=True, timeout=120, check=False
    )


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def test_the_cli_exits_2_with_the_one_line() -> None:
    result = run_cli("dlq", "stats", env={**BAD, "AICM_BROKER_URL": TEST_REDIS_URL})
    assert result.returncode == 2
    assert _lines(result.stderr) == [f"Error: {LINE}"]
    assert result.stdout == ""


def test_the_worker_exits_non_zero_with_the_one_line() -> None:
    result = _run(sys.executable, "-m", "celery", "-A", "aicm_tasks", "worker", **BAD)
    assert result.returncode == 2, result.stderr[-2000:]
    assert _lines(result.stderr) == [f"aicm-tasks: {LINE}"]
    assert "Traceback" not in result.stderr + result.stdout


def test_flower_and_other_celery_commands_say_the_same() -> None:
    result = _run(sys.executable, "-m", "celery", "-A", "aicm_tasks", "inspect", "ping", **BAD)
    assert result.returncode == 2
    assert _lines(result.stderr) == [f"aicm-tasks: {LINE}"]


def test_the_library_raises_the_settings_error_with_the_one_line() -> None:
    code = (
        "import aicm_tasks\n"
        "try:\n"
        "    aicm_tasks.track.delay('openai::gpt-4o', {'input_tokens': 1})\n"
        "except aicm_tasks.SettingsError as exc:\n"
        "    print(repr(str(exc)), exc.variables)\n"
    )
    result = _run(sys.executable, "-c", code, **BAD)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == f"{LINE!r} ('AICM_BATCH_SIZE',)"


def test_the_library_raises_it_uncaught_as_one_error_line_under_the_traceback() -> None:
    result = _run(sys.executable, "-c", "import aicm_tasks; aicm_tasks.track", **BAD)
    assert result.returncode == 1
    # Python prints the traceback of the user's line; the error itself is one line,
    # with no pydantic dump chained under it.
    assert _lines(result.stderr)[-1] == f"aicm_tasks.errors.SettingsError: {LINE}"
    assert "validation error" not in result.stderr
    assert "During handling" not in result.stderr


def test_the_unknown_variable_warning_is_printed_once_per_process() -> None:
    # Settings read three times: by hand twice, then by the app on first use.
    code = (
        "import logging; logging.basicConfig()\n"
        "import aicm_tasks\n"
        "aicm_tasks.Settings.from_env(); aicm_tasks.Settings.from_env()\n"
        "aicm_tasks.app\n"
    )
    result = _run(sys.executable, "-c", code, AICM_BACTH_SIZE="5", AICM_TEST_ANYTHING="1")
    assert result.returncode == 0, result.stderr[-2000:]
    assert _lines(result.stderr) == [
        "WARNING:aicm_tasks.settings:unknown setting AICM_BACTH_SIZE is ignored;"
        " did you mean AICM_BATCH_SIZE?"
    ]


def test_a_worker_without_an_api_key_stops_with_one_line() -> None:
    result = _run(
        sys.executable, "-m", "celery", "-A", "aicm_tasks", "worker", "--pool", "solo",
        "-n", f"no-key-{os.getpid()}@%h",
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-2000:]
    assert "AICM_API_KEY is not set" in result.stderr
    assert "Traceback" not in result.stderr
