"""``costs`` and ``budget`` against a real ``aicm-tasks serve``: a missing key is named,
an overspent budget reads "over by", and the server's word on an unknown service
key matches what happens to the record."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from aicm_tasks.devtools.processes import free_port, start_server, stop_process
from tests.support.pipeline import LocalServer

pytestmark = pytest.mark.integration

DAY = "2024-12-03"


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalServer]:
    # $1 a month in all, $0.05 for acme: one 1M-token gpt-4o-mini record ($0.15) overspends acme.
    monkeypatch.setenv("AICM_MONTHLY_BUDGET_USD", "1")
    monkeypatch.setenv("AICM_CUSTOMER_BUDGETS_USD", json.dumps({"acme": 0.05}))
    port = free_port()
    api_key = secrets.token_urlsafe(16)
    process = start_server(port, tmp_path / "ledger.sqlite3", api_key)
    yield LocalServer(f"http://127.0.0.1:{port}", api_key, process)
    stop_process(process)


def cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``aicm-tasks ARGS`` with no AICM_* variable but ``env`` (no key leaks in)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("AICM_")}
    return subprocess.run(
        [sys.executable, "-m", "aicm_tasks", *args],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def track(server: LocalServer, *records: dict[str, object]) -> dict[str, dict[str, object]]:
    response = httpx.post(
        f"{server.url}/api/v1/track",
        json={"tracked": list(records)},
        headers={"Authorization": f"Bearer {server.api_key}"},
        timeout=30,
    )
    response.raise_for_status()
    return {r["response_id"]: r for r in response.json()["results"]}


def record(response_id: str, service_key: str, customer_key: str = "acme") -> dict[str, object]:
    when = datetime.fromisoformat(f"{DAY}T12:00:00+00:00").timestamp()
    return {
        "service_key": service_key,
        "response_id": response_id,
        "timestamp": f"{when:.3f}",
        "payload": {"input_tokens": 1_000_000, "output_tokens": 0},
        "customer_key": customer_key,
    }


@pytest.mark.parametrize("command", ["costs", "budget"])
def test_without_a_key_the_command_says_the_key_is_missing(
    server: LocalServer, command: str
) -> None:
    result = cli(command, AICM_SERVER_URL=server.url)
    assert result.returncode == (3 if command == "budget" else 1)
    assert result.stderr.strip() == (
        "Error: no API key for the local server: give --api-key, or set AICM_SERVER_API_KEY"
        " (or AICM_API_KEY), the key `aicm-tasks serve` was started with"
    )
    assert "Illegal header" not in result.stderr and "no answer" not in result.stderr


def test_a_key_no_header_can_carry_is_named_not_sent(server: LocalServer) -> None:
    result = cli("costs", "--api-key", "abc\ndef", AICM_SERVER_URL=server.url)
    assert result.returncode == 1
    assert "an HTTP header cannot carry" in result.stderr
    assert "abc" not in result.stderr


def test_budget_says_over_by_and_json_has_a_field_for_it(server: LocalServer) -> None:
    results = track(server, record("r1", "openai::gpt-4o-mini"))
    assert results["r1"]["status"] == "completed"
    env = {"AICM_SERVER_URL": server.url, "AICM_SERVER_API_KEY": server.api_key}

    shown = cli("budget", "--as-of", DAY, **env)
    # The exit code is the total's: $0.15 of $1 by the 3rd projects past $1 (warning).
    assert shown.returncode == 1, shown.stderr
    acme = next(line for line in shown.stdout.splitlines() if line.startswith("acme:"))
    assert "over by $0.100000" in acme and "left" not in acme and "$-" not in acme
    total = next(line for line in shown.stdout.splitlines() if line.startswith("all customers:"))
    assert "$0.850000 left" in total

    as_json = cli("budget", "--as-of", DAY, "--json", **env)
    status = json.loads(as_json.stdout)
    assert status["over_budget_by"] == 0
    [acme_status] = status["customers"]
    assert acme_status["over_budget_by"] == pytest.approx(0.10)
    assert acme_status["remaining_budget"] == pytest.approx(-0.10)


def test_an_unknown_service_key_is_answered_as_not_stored(server: LocalServer) -> None:
    results = track(server, record("u1", "nobody::model"))
    assert results["u1"]["status"] == "service_key_unknown"
    errors = results["u1"]["errors"]
    assert isinstance(errors, list) and len(errors) == 1
    message = str(errors[0])
    assert "not stored" in message and "queued for review" not in message
    assert "PUT /api/v1/services/nobody::model" in message
    assert server.stats()["events"] == 0  # what the message says: nothing kept
