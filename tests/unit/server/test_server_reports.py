"""cost_report and budget_status on a fixed data set of daily rollups."""

from __future__ import annotations

from datetime import date

import pytest

from aicm_tasks.server.reports import budget_status, cost_report
from aicm_tasks.server.store import RollupRow

NANO = 1_000_000_000


def row(day: str, service: str, customer: str | None, requests: int, cost_usd: float) -> RollupRow:
    return RollupRow(
        day=day,
        service_key=service,
        customer_key=customer,
        requests=requests,
        input_tokens=100 * requests,
        output_tokens=10 * requests,
        cached_input_tokens=0,
        reasoning_tokens=0,
        cost_nano_usd=round(cost_usd * NANO),
    )


#: Two weeks across a month boundary (2024-11-25 is a Monday, ISO week 48).
ROWS = [
    row("2024-11-25", "openai::gpt-4o-mini", "acme", 10, 1.0),
    row("2024-11-25", "anthropic::claude-3-5-haiku", "acme", 5, 2.5),
    row("2024-11-30", "openai::gpt-4o-mini", None, 4, 0.5),
    row("2024-12-01", "openai::gpt-4o", "globex", 1, 3.0),
    row("2024-12-02", "openai::gpt-4o-mini", "globex", 20, 2.0),
]
START, END = date(2024, 11, 25), date(2024, 12, 2)


def breakdown(group_by: str) -> list[tuple[object, float, int, int]]:
    report = cost_report(ROWS, start=START, end=END, group_by=group_by)
    assert all(entry["dimension"] == group_by for entry in report["breakdown"])
    return [(e["value"], e["cost"], e["tokens"], e["requests"]) for e in report["breakdown"]]


def test_totals_and_average() -> None:
    report = cost_report(ROWS, start=START, end=END)
    assert report["total_cost"] == 9.0
    assert report["total_requests"] == 40
    assert report["total_tokens"] == 40 * 110
    assert report["average_cost_per_request"] == 0.225
    assert (report["start"], report["end"], report["currency"]) == (
        "2024-11-25",
        "2024-12-02",
        "USD",
    )


@pytest.mark.parametrize(
    ("group_by", "expected"),
    [
        (
            "day",
            [
                ("2024-11-25", 3.5, 1650, 15),
                ("2024-11-30", 0.5, 440, 4),
                ("2024-12-01", 3.0, 110, 1),
                ("2024-12-02", 2.0, 2200, 20),
            ],
        ),
        ("week", [("2024-W48", 7.0, 2200, 20), ("2024-W49", 2.0, 2200, 20)]),
        ("month", [("2024-11", 4.0, 2090, 19), ("2024-12", 5.0, 2310, 21)]),
        ("provider", [("openai", 6.5, 3850, 35), ("anthropic", 2.5, 550, 5)]),
        (
            "model",
            [
                ("gpt-4o-mini", 3.5, 3740, 34),
                ("gpt-4o", 3.0, 110, 1),
                ("claude-3-5-haiku", 2.5, 550, 5),
            ],
        ),
        ("customer", [("globex", 5.0, 2310, 21), ("acme", 3.5, 1650, 15), (None, 0.5, 440, 4)]),
    ],
)
def test_group_by(group_by: str, expected: list[tuple[object, float, int, int]]) -> None:
    assert breakdown(group_by) == expected


def test_an_empty_range_reports_zeros() -> None:
    report = cost_report([], start=START, end=END, group_by="model")
    assert (report["total_cost"], report["total_requests"], report["breakdown"]) == (0.0, 0, [])
    assert report["average_cost_per_request"] == 0.0


def test_an_unknown_grouping_is_refused() -> None:
    with pytest.raises(ValueError, match="group_by"):
        cost_report(ROWS, start=START, end=END, group_by="hour")


DECEMBER = [r for r in ROWS if r.day.startswith("2024-12")]  # $5.00 by 2024-12-02


def test_budget_math_on_a_healthy_month() -> None:
    # 2 days elapsed of 31: $2.50 a day, $77.50 projected, under a $100 budget.
    status = budget_status(DECEMBER, as_of=date(2024, 12, 2), monthly_budget=100.0)
    assert status == {
        "customer_key": None,
        "period_start": "2024-12-01",
        "as_of": "2024-12-02",
        "currency": "USD",
        "current_spend": 5.0,
        "monthly_budget": 100.0,
        "utilization_percentage": 5.0,
        "remaining_budget": 95.0,
        "daily_average": 2.5,
        "projected_month_end": 77.5,
        "status": "healthy",
    }


@pytest.mark.parametrize(
    ("budget", "state"),
    [
        (78.0, "healthy"),  # projection $77.50 stays under
        (77.0, "warning"),  # projection over the budget
        (6.0, "warning"),  # 83 % used
        (5.0, "critical"),  # 100 % used
        (4.0, "critical"),
    ],
)
def test_budget_status_thresholds(budget: float, state: str) -> None:
    status = budget_status(DECEMBER, as_of=date(2024, 12, 2), monthly_budget=budget)
    assert status["status"] == state
    assert status["remaining_budget"] == pytest.approx(budget - 5.0)


def test_no_budget_reports_spend_and_projection_only() -> None:
    status = budget_status(
        DECEMBER, as_of=date(2024, 12, 2), monthly_budget=None, customer_key="globex"
    )
    assert status["status"] == "no_budget"
    assert status["customer_key"] == "globex"
    assert (status["utilization_percentage"], status["remaining_budget"]) == (None, None)
    assert status["projected_month_end"] == 77.5


def test_february_of_a_leap_year_has_29_days() -> None:
    rows = [row("2024-02-10", "openai::gpt-4o", None, 1, 10.0)]
    status = budget_status(rows, as_of=date(2024, 2, 10), monthly_budget=100.0)
    assert status["daily_average"] == 1.0
    assert status["projected_month_end"] == 29.0
