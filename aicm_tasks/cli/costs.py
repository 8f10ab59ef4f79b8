"""``aicm-tasks costs`` and ``aicm-tasks budget``: the local server's ledger, in a terminal.

Both ask the running server over HTTP (``GET /api/v1/costs``,
``GET /api/v1/budget-status``) with the same Bearer key as ``/track``; they
never open the database themselves, so they work the same on SQLite and
PostgreSQL, and from another machine.
"""

from __future__ import annotations

import csv
import re
import sys
from datetime import date, datetime, timedelta, timezone
from typing import Any

import click
import httpx
from rich.console import Console
from rich.table import Table

from aicm_tasks.cli.common import echo_json, json_option, load_settings
from aicm_tasks.contract import COST_GROUP_BY
from aicm_tasks.redact import redact_url

#: Width of the bar chart column, in characters.
BAR_WIDTH = 30
#: ``--since`` as a count of days or weeks back from today: ``7d``, ``4w``.
_RELATIVE = re.compile(r"(\d+)([dw])")
#: Columns of ``--csv``, one row per breakdown entry.
CSV_COLUMNS = ("dimension", "value", "cost", "tokens", "requests")


def parse_since(raw: str, today: date) -> date:
    """``YYYY-MM-DD``, or ``Nd`` / ``Nw`` back from ``today`` (``7d``: the last 7 days)."""
    relative = _RELATIVE.fullmatch(raw.strip())
    if relative is not None:
        count = int(relative.group(1)) * (7 if relative.group(2) == "w" else 1)
        return today - timedelta(days=max(count - 1, 0))
    try:
        return date.fromisoformat(raw)
    except ValueError:
        raise click.BadParameter(
            f"{raw!r} is neither YYYY-MM-DD nor a count of days/weeks (7d, 4w)"
        ) from None


def bar(value: float, largest: float, width: int = BAR_WIDTH) -> str:
    """A horizontal bar of ``value`` against ``largest``, in eighths of a character."""
    if largest <= 0 or value <= 0:
        return ""
    eighths = round(value / largest * width * 8)
    full, rest = divmod(max(eighths, 1), 8)
    return "█" * full + ("" if rest == 0 else " ▏▎▍▌▋▊▉"[rest])


#: Exit code of ``budget`` when it cannot tell (no key, no server, a refusal):
#: 1 and 2 already mean warning and critical.
EXIT_BUDGET_UNKNOWN = 3


class LedgerError(click.ClickException):
    """The command could not get its answer from the local server."""


class BudgetUnknownError(LedgerError):
    """``budget`` could not get the status: its own exit code, not warning's 1."""

    exit_code = EXIT_BUDGET_UNKNOWN


def _get(
    path: str,
    params: dict[str, str],
    url: str | None,
    api_key: str | None,
    *,
    error: type[LedgerError] = LedgerError,
) -> Any:
    settings = load_settings()
    base = (url or settings.server_url).rstrip("/")
    if api_key is None:
        secret = settings.server_api_key or settings.api_key
        api_key = secret.get_secret_value() if secret is not None else ""
    # Checked here, not left to httpx: an empty key makes "Bearer " a header
    # value h11 refuses ("Illegal header value"), reported as if no server answered.
    if not api_key.strip():
        raise error(
            "no API key for the local server: give --api-key, or set AICM_SERVER_API_KEY"
            " (or AICM_API_KEY), the key `aicm-tasks serve` was started with",
        )
    if not api_key.isprintable() or api_key != api_key.strip():
        raise error(
            "the API key holds a space, newline or control character an HTTP header cannot"
            " carry: check --api-key / AICM_SERVER_API_KEY",
        )
    try:
        response = httpx.get(
            f"{base}/api/v1{path}",
            params={k: v for k, v in params.items() if v},
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=30,
        )
    except httpx.HTTPError as exc:
        raise error(
            # redact_url: a --url may carry a password, never echoed.
            f"no answer from the local server at {redact_url(base)} ({exc}); is `aicm-tasks"
            " serve` running?"
            " (--url or AICM_SERVER_URL)",
        ) from exc
    if response.status_code == 401:
        raise error(
            "the server refused the API key; give --api-key or set AICM_SERVER_API_KEY",
        )
    if response.status_code != 200:
        try:
            detail = response.json().get("detail", response.text)
        except ValueError:
            detail = response.text[:200]
        raise error(f"the server answered {response.status_code}: {detail}")
    return response.json()


def _money(usd: float) -> str:
    return f"${usd:,.2f}" if abs(usd) >= 1 or usd == 0 else f"${usd:,.6f}"


server_options = [
    click.option("--url", default=None, help="The local server [default: AICM_SERVER_URL]."),
    click.option(
        "--api-key",
        default=None,
        help="Bearer key [default: AICM_SERVER_API_KEY, else AICM_API_KEY].",
    ),
]


def _with_server_options(func: Any) -> Any:
    for option in reversed(server_options):
        func = option(func)
    return func


@click.command()
@click.option(
    "--group-by",
    type=click.Choice(COST_GROUP_BY),
    default="day",
    show_default=True,
    help="How to break the costs down.",
)
@click.option("--since", default="30d", show_default=True, help="First day: YYYY-MM-DD, 7d, 4w.")
@click.option("--until", default=None, help="Last day, YYYY-MM-DD [default: today].")
@click.option("--customer", default=None, help="Only this customer key.")
@click.option("--service", default=None, help="Only this service key.")
@_with_server_options
@json_option
@click.option("--csv", "as_csv", is_flag=True, help="Print the breakdown as CSV.")
def costs(
    group_by: str,
    since: str,
    until: str | None,
    customer: str | None,
    service: str | None,
    url: str | None,
    api_key: str | None,
    as_json: bool,
    as_csv: bool,
) -> None:
    """What LLM usage cost, from the local server's ledger: totals, breakdown, chart."""
    today = datetime.now(timezone.utc).date()
    start = parse_since(since, today)
    params = {
        "group_by": group_by,
        "start": start.isoformat(),
        "end": until or "",
        "customer_key": customer or "",
        "service_key": service or "",
    }
    report = _get("/costs", params, url, api_key)
    if as_json:
        echo_json(report)
        return
    if as_csv:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        for entry in report["breakdown"]:
            writer.writerow(
                (
                    entry["dimension"],
                    entry["value"] or "",
                    f"{entry['cost']:.9f}",
                    entry["tokens"],
                    entry["requests"],
                )
            )
        return
    table = Table(
        title=f"LLM costs {report['start']} to {report['end']}, by {group_by}",
        caption=(
            f"total {_money(report['total_cost'])} over {report['total_requests']:,} requests"
            f" ({report['total_tokens']:,} tokens),"
            f" {_money(report['average_cost_per_request'])} a request"
        ),
    )
    table.add_column(group_by)
    table.add_column("cost", justify="right")
    table.add_column("requests", justify="right")
    table.add_column("tokens", justify="right")
    table.add_column("", no_wrap=True)
    largest = max((entry["cost"] for entry in report["breakdown"]), default=0.0)
    for entry in report["breakdown"]:
        table.add_row(
            entry["value"] or "(no customer)",
            _money(entry["cost"]),
            f"{entry['requests']:,}",
            f"{entry['tokens']:,}",
            bar(entry["cost"], largest),
        )
    Console().print(table)


@click.command()
@click.option("--customer", default=None, help="This customer's budget instead of the total.")
@click.option("--as-of", default=None, help="The day to judge the month at, YYYY-MM-DD [today].")
@_with_server_options
@json_option
def budget(
    customer: str | None, as_of: str | None, url: str | None, api_key: str | None, as_json: bool
) -> None:
    """This month's spend against the budget; exit code 1 at warning, 2 at critical,
    3 when it cannot tell (no key, no server)."""
    params = {"customer_key": customer or "", "as_of": as_of or ""}
    status = _get("/budget-status", params, url, api_key, error=BudgetUnknownError)
    lines = [status, *status.get("customers", [])]
    for line in lines:
        line["over_budget_by"] = over_budget_by(line)
    if as_json:
        echo_json(status)
    else:
        for line in lines:
            click.echo(budget_line(line))
    sys.exit({"warning": 1, "critical": 2}.get(status["status"], 0))


def over_budget_by(line: dict[str, Any]) -> float | None:
    """USD spent past the budget (0 within it); None when no budget is set."""
    if line.get("monthly_budget") is None:
        return None
    return max(0.0, -float(line["remaining_budget"]))


def budget_line(line: dict[str, Any]) -> str:
    """One budget-status entry as a sentence: "... $0.29 left" or "... over by $0.71"."""
    who = line["customer_key"] or "all customers"
    if line["monthly_budget"] is None:
        return (
            f"{who}: {_money(line['current_spend'])} since {line['period_start']},"
            f" projected {_money(line['projected_month_end'])}; no budget set"
        )
    remaining = float(line["remaining_budget"])
    left = f"over by {_money(-remaining)}" if remaining < 0 else f"{_money(remaining)} left"
    return (
        f"{who}: {line['status'].upper()} {_money(line['current_spend'])} of"
        f" {_money(line['monthly_budget'])} ({line['utilization_percentage']}%),"
        f" {left}, {_money(line['daily_average'])}/day,"
        f" projected {_money(line['projected_month_end'])} at month end"
    )
