"""The cost ledger end to end: track.delay -> Redis -> a real worker -> `aicm-tasks serve`
on SQLite and on PostgreSQL -> `aicm-tasks costs` and `aicm-tasks budget` as subprocesses."""

from __future__ import annotations

import csv
import io
import json
import secrets
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
import redis

from aicm_tasks.devtools.processes import free_port, start_server, stop_process
from aicm_tasks.settings import Settings
from tests.conftest import TEST_REDIS_URL
from tests.support.cli import run_cli
from tests.support.pipeline import LocalServer, Pipeline

pytestmark = pytest.mark.integration

#: Hand-computed, from genai-prices' per-million prices:
#: gpt-4o-mini, 1,000 in + 100 out at $0.15 / $0.60: $0.00015 + $0.00006.
MINI_USD = 0.00021
#: claude-3-5-haiku, 2,000 in + 500 out at $0.80 / $4: $0.0016 + $0.002.
HAIKU_USD = 0.0036


def at(day: str) -> float:
    return datetime.fromisoformat(f"{day}T12:00:00+00:00").timestamp()


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_server(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[LocalServer]:
    db = (
        str(tmp_path / "ledger.sqlite3")
        if request.param == "sqlite"
        else request.getfixturevalue("postgres_url")
    )
    # Budgets reach `serve` through its environment, as an operator would set them.
    monkeypatch.setenv("AICM_MONTHLY_BUDGET_USD", "100")
    monkeypatch.setenv("AICM_CUSTOMER_BUDGETS_USD", json.dumps({"acme": 0.05}))
    port = free_port()
    api_key = secrets.token_urlsafe(16)
    process = start_server(port, db, api_key, keys_dir=tmp_path / "keys")
    yield LocalServer(f"http://127.0.0.1:{port}", api_key, process)
    stop_process(process)


@pytest.fixture
def ledger_pipeline(
    real_redis: redis.Redis, ledger_server: LocalServer, tmp_path: Path
) -> Iterator[Pipeline]:
    run = uuid.uuid4().hex[:6]
    settings = Settings(
        broker_url=TEST_REDIS_URL, queue=f"aicm.test.{run}", key_prefix=f"aicm-test-{run}"
    )
    pipeline = Pipeline(settings, ledger_server, ledger_server.url, tmp_path)
    yield pipeline
    pipeline.stop()


def test_a_team_gets_its_cost_report_and_budget_from_serve_and_the_worker(
    ledger_pipeline: Pipeline,
) -> None:
    pipeline = ledger_pipeline
    server = pipeline.server
    pipeline.start_worker()
    for n in range(200):  # 2024-12-01 and -02, customers acme and globex
        pipeline.track.delay(
            "openai::gpt-4o-mini",
            {"input_tokens": 1000, "output_tokens": 100},
            customer_key="acme" if n % 2 else "globex",
            timestamp=at(f"2024-12-0{1 + n % 2}"),
        )
    for _ in range(50):
        pipeline.track.delay(
            "anthropic::claude-3-5-haiku-20241022",
            {"input_tokens": 2000, "output_tokens": 500},
            customer_key="acme",
            timestamp=at("2024-12-03"),
        )
    for _ in range(5):
        pipeline.track.delay("nobody::model", {"input_tokens": 1}, timestamp=at("2024-12-03"))
    pipeline.wait_settled(255)
    assert server.stats()["events"] == 250

    env = {"AICM_SERVER_URL": server.url, "AICM_SERVER_API_KEY": server.api_key}
    span = ("--since", "2024-12-01", "--until", "2024-12-31")
    result = run_cli("costs", "--group-by", "model", *span, "--json", env=env)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    total = 200 * MINI_USD + 50 * HAIKU_USD
    assert report["total_cost"] == pytest.approx(total)
    assert (report["total_requests"], report["total_tokens"]) == (250, 200 * 1100 + 50 * 2500)
    assert [(e["value"], e["requests"]) for e in report["breakdown"]] == [
        ("claude-3-5-haiku-20241022", 50),
        ("gpt-4o-mini", 200),
    ]

    result = run_cli("costs", "--group-by", "customer", *span, "--csv", env=env)
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    by_customer = {row["value"]: float(row["cost"]) for row in rows}
    assert by_customer == pytest.approx(
        {"acme": 100 * MINI_USD + 50 * HAIKU_USD, "globex": 100 * MINI_USD}
    )

    result = run_cli("costs", "--group-by", "day", *span, env=env)
    assert result.returncode == 0, result.stderr
    assert "2024-12-03" in result.stdout and "█" in result.stdout
    assert server.api_key not in result.stdout + result.stderr

    # December 3rd: $0.222 so far of $100 (healthy); acme's $0.201 is over its $0.05 (critical).
    result = run_cli("budget", "--as-of", "2024-12-03", "--json", env=env)
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert status["current_spend"] == pytest.approx(total)
    assert status["projected_month_end"] == pytest.approx(total / 3 * 31)
    assert status["status"] == "healthy"
    [acme] = status["customers"]
    assert acme["current_spend"] == pytest.approx(100 * MINI_USD + 50 * HAIKU_USD)
    assert acme["status"] == "critical"
    result = run_cli("budget", "--as-of", "2024-12-03", "--customer", "acme", env=env)
    assert result.returncode == 2
    assert "CRITICAL" in result.stdout


def test_costs_without_the_right_key_says_so(ledger_server: LocalServer) -> None:
    env = {"AICM_SERVER_URL": ledger_server.url, "AICM_SERVER_API_KEY": "wrong"}
    result = run_cli("costs", "--json", env=env)
    assert result.returncode == 1
    assert "refused the API key" in result.stderr
