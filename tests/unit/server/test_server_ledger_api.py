"""GET /costs, /budget-status and /usage/events over both storages (Starlette's TestClient)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
from starlette.testclient import TestClient

from aicm_tasks.server import create_server_app

API_KEY = "ledger-key"
AUTH = {"Authorization": f"Bearer {API_KEY}"}


def at(day: str) -> str:
    """Noon UTC of ``day`` as the contract's epoch-seconds string."""
    moment = datetime.fromisoformat(f"{day}T12:00:00+00:00")
    return f"{moment.timestamp():.3f}"


def record(rid: str, service: str, day: str, customer: str | None, **payload: int) -> Any:
    return {
        "service_key": service,
        "response_id": rid,
        "timestamp": at(day),
        "payload": payload,
        "customer_key": customer,
    }


#: Hand-computed costs (genai-prices' per-million prices):
#: gpt-4o-mini $0.15 in / $0.60 out; claude-3-5-haiku $0.80 in / $4 out.
RECORDS = [
    # 1,000,000 in + 100,000 out on gpt-4o-mini = $0.15 + $0.06 = $0.21
    record(
        "a",
        "openai::gpt-4o-mini",
        "2024-12-01",
        "acme",
        input_tokens=1_000_000,
        output_tokens=100_000,
    ),
    # 500,000 in + 50,000 out on haiku = $0.40 + $0.20 = $0.60
    record(
        "b",
        "anthropic::claude-3-5-haiku-20241022",
        "2024-12-01",
        "globex",
        input_tokens=500_000,
        output_tokens=50_000,
    ),
    # 2,000,000 in on gpt-4o-mini = $0.30
    record("c", "openai::gpt-4o-mini", "2024-12-03", None, input_tokens=2_000_000),
    # November: $0.15, outside December's budget window
    record("d", "openai::gpt-4o-mini", "2024-11-30", "acme", input_tokens=1_000_000),
]


@pytest.fixture
def client(ledger_db: str) -> Iterator[TestClient]:
    app = create_server_app(
        api_key=API_KEY,
        db=ledger_db,
        monthly_budget_usd=2.0,
        customer_budgets_usd={"acme": 0.25, "globex": 10.0},
    )
    with TestClient(app) as test_client:
        response = test_client.post("/api/v1/track", headers=AUTH, json={"tracked": RECORDS})
        assert {r["status"] for r in response.json()["results"]} == {"completed"}
        yield test_client


def get(client: TestClient, path: str, **params: str) -> Any:
    response = client.get(f"/api/v1{path}", params=params, headers=AUTH)
    assert response.status_code == 200, response.text
    return response.json()


def test_costs_by_model_over_a_date_range(client: TestClient) -> None:
    report = get(client, "/costs", start="2024-11-01", end="2024-12-31", group_by="model")
    assert report["total_cost"] == pytest.approx(0.21 + 0.60 + 0.30 + 0.15)
    assert report["total_requests"] == 4
    assert report["total_tokens"] == 4_650_000
    assert report["average_cost_per_request"] == pytest.approx(1.26 / 4)
    assert [(e["value"], e["requests"]) for e in report["breakdown"]] == [
        ("gpt-4o-mini", 3),
        ("claude-3-5-haiku-20241022", 1),
    ]
    assert report["breakdown"][0]["cost"] == pytest.approx(0.66)


def test_costs_by_day_customer_and_filters(client: TestClient) -> None:
    by_day = get(client, "/costs", start="2024-12-01", end="2024-12-03")
    assert [(e["value"], round(e["cost"], 9)) for e in by_day["breakdown"]] == [
        ("2024-12-01", 0.81),
        ("2024-12-03", 0.3),
    ]
    by_customer = get(client, "/costs", start="2024-11-01", end="2024-12-31", group_by="customer")
    assert [(e["value"], round(e["cost"], 9)) for e in by_customer["breakdown"]] == [
        ("globex", 0.6),
        ("acme", 0.36),
        (None, 0.3),
    ]
    acme = get(client, "/costs", start="2024-11-01", end="2024-12-31", customer_key="acme")
    assert (acme["total_requests"], round(acme["total_cost"], 9)) == (2, 0.36)
    by_month = get(client, "/costs", start="2024-11-01", end="2024-12-31", group_by="month")
    assert [e["value"] for e in by_month["breakdown"]] == ["2024-11", "2024-12"]


def test_budget_status_for_all_and_per_customer(client: TestClient) -> None:
    status = get(client, "/budget-status", as_of="2024-12-03")
    # December so far: $1.11 in 3 days of 31.
    assert status["current_spend"] == pytest.approx(1.11)
    assert status["monthly_budget"] == 2.0
    assert status["daily_average"] == pytest.approx(0.37)
    assert status["projected_month_end"] == pytest.approx(0.37 * 31)
    assert status["utilization_percentage"] == pytest.approx(55.5)
    assert status["remaining_budget"] == pytest.approx(0.89)
    assert status["status"] == "warning"  # the projection is over budget
    customers = {c["customer_key"]: c for c in status["customers"]}
    assert customers["acme"]["current_spend"] == pytest.approx(0.21)
    assert customers["acme"]["status"] == "warning"  # 84 %
    assert customers["globex"]["status"] == "healthy"
    globex = get(client, "/budget-status", as_of="2024-12-03", customer_key="globex")
    assert (globex["customer_key"], globex["monthly_budget"]) == ("globex", 10.0)
    assert globex["current_spend"] == pytest.approx(0.6)
    nobody = get(client, "/budget-status", as_of="2024-12-03", customer_key="initech")
    assert (nobody["status"], nobody["current_spend"]) == ("no_budget", 0.0)


def test_usage_events_filter_by_dates(client: TestClient) -> None:
    page = get(client, "/usage/events", start="2024-12-01", end="2024-12-01")
    assert [e["response_id"] for e in page["events"]] == ["a", "b"]
    assert page["events"][0]["cost"] == pytest.approx(0.21)
    later = get(client, "/usage/events", start="2024-12-02", customer_key="acme")
    assert later["events"] == []


@pytest.mark.parametrize(
    "query",
    [
        "/costs?group_by=hour",
        "/costs?start=yesterday",
        "/costs?start=2024-12-05&end=2024-12-01",
        "/budget-status?as_of=2024-13-01",
        "/usage/events?end=12/01/2024",
    ],
)
def test_bad_query_parameters_get_400(client: TestClient, query: str) -> None:
    response = client.get(f"/api/v1{query}", headers=AUTH)
    assert response.status_code == 400
    assert "detail" in response.json()


@pytest.mark.parametrize("path", ["/costs", "/budget-status"])
def test_the_ledger_needs_the_api_key(client: TestClient, path: str) -> None:
    assert client.get(f"/api/v1{path}").status_code == 401
    assert client.get(f"/api/v1{path}", headers={"Authorization": "Bearer no"}).status_code == 401
