"""Cost reports and budget status, computed from daily rollup rows (pure functions).

Both storages hand back the same :class:`~aicm_tasks.server.store.RollupRow`
lists, so the arithmetic lives here once and is tested on fixed data.

Budget status, for the calendar month (UTC) of ``as_of``:

- ``current_spend``: cost from the 1st of the month to ``as_of``, inclusive;
- ``daily_average``: ``current_spend`` / days elapsed (``as_of``'s day of month);
- ``projected_month_end``: ``daily_average`` * days in the month;
- ``utilization_percentage``: ``current_spend`` / ``monthly_budget`` * 100;
- ``status``: ``critical`` at or over 100 % of the budget, ``warning`` at or over
  :data:`WARNING_PERCENT` or when the projection exceeds the budget, else
  ``healthy``; ``no_budget`` when no budget is set.
"""

from __future__ import annotations

import calendar
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from aicm_tasks.contract import COST_GROUP_BY
from aicm_tasks.server.catalog import split_service_key
from aicm_tasks.server.store import RollupRow

#: Ways ``GET /costs`` can group (the contract's list).
GROUP_BY = COST_GROUP_BY
#: Utilisation at which a budget's status turns to ``warning``, in percent.
WARNING_PERCENT = 80.0
#: Dollars are reported rounded to this many decimals (costs are kept in nano-dollars).
USD_DECIMALS = 9
#: Time groupings: their breakdown is in time order, the others by cost, largest first.
_TIME_DIMENSIONS = ("day", "week", "month")
#: The rollup column each grouping needs from the store (which sums over the others).
ROLLUP_COLUMN = {
    "day": "day",
    "week": "day",
    "month": "day",
    "provider": "service_key",
    "model": "service_key",
    "service": "service_key",
    "customer": "customer_key",
}


def _usd(nano_usd: int) -> float:
    return round(nano_usd / 1e9, USD_DECIMALS)


def dimension_value(row: RollupRow, group_by: str) -> str | None:
    """The value of ``row`` in the ``group_by`` dimension (``2024-W47``, ``openai``, ...)."""
    if group_by == "day":
        return row.day
    if group_by == "month":
        return row.day[:7]
    if group_by == "week":
        year, week, _ = date.fromisoformat(row.day).isocalendar()
        return f"{year}-W{week:02d}"
    if group_by == "customer":
        return row.customer_key
    if group_by == "service":
        return row.service_key
    parts = split_service_key(row.service_key)
    vendor, model = parts if parts is not None else (row.service_key, row.service_key)
    if group_by == "provider":
        return vendor
    if group_by == "model":
        return model
    raise ValueError(f"group_by must be one of {', '.join(GROUP_BY)}, not {group_by!r}")


def cost_report(
    rows: Iterable[RollupRow], *, start: date, end: date, group_by: str = "day"
) -> dict[str, Any]:
    """Totals and a breakdown by ``group_by`` of the rollup rows (already filtered to the range).

    The shape of ``GET /api/v1/costs``: ``total_cost`` (USD), ``total_tokens``,
    ``total_requests``, ``average_cost_per_request`` and ``breakdown`` entries
    ``{dimension, value, cost, tokens, requests}``.
    """
    if group_by not in GROUP_BY:
        raise ValueError(f"group_by must be one of {', '.join(GROUP_BY)}, not {group_by!r}")
    groups: dict[str | None, list[int]] = {}
    for row in rows:
        acc = groups.setdefault(dimension_value(row, group_by), [0, 0, 0])
        acc[0] += row.cost_nano_usd
        acc[1] += row.input_tokens + row.output_tokens
        acc[2] += row.requests
    cost, tokens, requests = (sum(acc[i] for acc in groups.values()) for i in range(3))
    if group_by in _TIME_DIMENSIONS:
        order = sorted(groups, key=lambda value: value or "")
    else:
        order = sorted(groups, key=lambda value: (-groups[value][0], value or ""))
    breakdown = [
        {
            "dimension": group_by,
            "value": value,
            "cost": _usd(groups[value][0]),
            "tokens": groups[value][1],
            "requests": groups[value][2],
        }
        for value in order
    ]
    return {
        "start": start.isoformat(),
        "end": end.isoformat(),
        "group_by": group_by,
        "currency": "USD",
        "total_cost": _usd(cost),
        "total_tokens": tokens,
        "total_requests": requests,
        "average_cost_per_request": round(cost / requests / 1e9, USD_DECIMALS) if requests else 0.0,
        "breakdown": breakdown,
    }


@dataclass(frozen=True, slots=True)
class MonthWindow:
    """The days of ``as_of``'s month up to ``as_of``, and the month's length."""

    first_day: date
    as_of: date
    days_elapsed: int
    days_in_month: int


def month_window(as_of: date) -> MonthWindow:
    """The budget window of ``as_of``: from the 1st of its month through ``as_of``."""
    return MonthWindow(
        first_day=as_of.replace(day=1),
        as_of=as_of,
        days_elapsed=as_of.day,
        days_in_month=calendar.monthrange(as_of.year, as_of.month)[1],
    )


def budget_status(
    rows: Iterable[RollupRow],
    *,
    as_of: date,
    monthly_budget: float | None,
    customer_key: str | None = None,
) -> dict[str, Any]:
    """Spend of ``as_of``'s month against ``monthly_budget`` (USD; None: no budget).

    ``rows`` are the month's rollups up to ``as_of`` (of one customer when
    ``customer_key`` is given). The math is in the module docstring.
    """
    window = month_window(as_of)
    spend = _usd(sum(row.cost_nano_usd for row in rows))
    daily = spend / window.days_elapsed
    projected = daily * window.days_in_month
    status: dict[str, Any] = {
        "customer_key": customer_key,
        "period_start": window.first_day.isoformat(),
        "as_of": as_of.isoformat(),
        "currency": "USD",
        "current_spend": spend,
        "monthly_budget": monthly_budget,
        "utilization_percentage": None,
        "remaining_budget": None,
        "daily_average": round(daily, USD_DECIMALS),
        "projected_month_end": round(projected, USD_DECIMALS),
        "status": "no_budget",
    }
    if monthly_budget is None:
        return status
    utilization = spend / monthly_budget * 100 if monthly_budget > 0 else float("inf")
    if utilization >= 100:
        state = "critical"
    elif utilization >= WARNING_PERCENT or projected > monthly_budget:
        state = "warning"
    else:
        state = "healthy"
    status.update(
        utilization_percentage=round(utilization, 2) if monthly_budget > 0 else None,
        remaining_budget=round(monthly_budget - spend, USD_DECIMALS),
        status=state,
    )
    return status


def default_range(today: date, days: int = 30) -> tuple[date, date]:
    """The last ``days`` days through ``today``."""
    return today - timedelta(days=days - 1), today
