"""Query parameters and pages of the SDK-shaped endpoints (``sdk_api.py``).

The official SDK's client (``aicostmanager`` 0.3.2) reads lists as pages
``{"count", "next", "previous", "results"}`` and follows ``next`` (an absolute
URL, or a path under its API root) until it is null; it sends ``limit`` and
``offset`` and dates as ``YYYY-MM-DD``. Every bad parameter is a 400, as in
``app.py``, never a 500.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timezone
from typing import Any

from starlette.datastructures import QueryParams
from starlette.exceptions import HTTPException
from starlette.requests import Request

from aicm_tasks.contract import MAX_KEY_LENGTH, text_problem
from aicm_tasks.server.ledger import MAX_LIST_LIMIT

#: Page size when the client gives no ``limit``.
DEFAULT_PAGE_SIZE = 100
#: Largest integer parameter: both databases bind 64-bit integers.
MAX_QUERY_INT = 2**63 - 1
#: Seconds in a UTC day: the end of an ``end_date`` is its midnight plus one day.
DAY_S = 86400


@dataclass(frozen=True, slots=True)
class PageRequest:
    """The ``limit`` (capped at :data:`MAX_LIST_LIMIT`) and ``offset`` of a page."""

    limit: int
    offset: int


def page_request(params: QueryParams) -> PageRequest:
    """``limit`` and ``offset`` from the query, or HTTPException 400."""
    limit = int_param(params.get("limit"), "limit", DEFAULT_PAGE_SIZE)
    if limit == 0:
        raise HTTPException(400, "limit must be at least 1")
    return PageRequest(min(limit, MAX_LIST_LIMIT), int_param(params.get("offset"), "offset", 0))


def page(
    request: Request, page_at: PageRequest, count: int, results: Sequence[Any]
) -> dict[str, Any]:
    """The SDK's page: ``count`` in all, links to the pages around this one, its results.

    ``next`` is null on the last page, which is what ends the SDK's iteration.
    """
    next_offset = page_at.offset + page_at.limit
    previous: str | None = None
    if page_at.offset > 0:
        previous = str(
            request.url.include_query_params(
                limit=page_at.limit, offset=max(page_at.offset - page_at.limit, 0)
            )
        )
    return {
        "count": count,
        "next": (
            str(request.url.include_query_params(limit=page_at.limit, offset=next_offset))
            if next_offset < count
            else None
        ),
        "previous": previous,
        "results": list(results),
    }


def int_param(raw: str | None, name: str, default: int) -> int:
    """An integer query parameter from 0 to :data:`MAX_QUERY_INT`, or HTTPException 400."""
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:  # also a number of more than 4,300 digits
        raise HTTPException(400, f"{name} must be an integer, not {raw[:20]!r}") from None
    if value < 0:
        raise HTTPException(400, f"{name} must not be negative")
    if value > MAX_QUERY_INT:
        raise HTTPException(400, f"{name} must be at most {MAX_QUERY_INT}")
    return value


def text_param(raw: str | None, name: str) -> str | None:
    """A key filter, or HTTPException 400 for a value no record could hold (NUL, too long)."""
    if raw is None or raw == "":
        return None
    if len(raw) > MAX_KEY_LENGTH:
        raise HTTPException(400, f"{name} is {len(raw)} characters, at most {MAX_KEY_LENGTH}")
    problem = text_problem(raw)
    if problem is not None:
        raise HTTPException(400, f"{name} {problem}")
    return raw


def text_list_param(params: QueryParams, name: str) -> list[str]:
    """A repeatable key filter (``service_key=a&service_key=b``), each value checked."""
    return [value for raw in params.getlist(name) if (value := text_param(raw, name)) is not None]


def bool_param(raw: str | None, name: str) -> bool | None:
    """``true``/``false`` (as the SDK's requests session writes booleans), or None."""
    if raw is None or raw == "":
        return None
    lowered = raw.lower()
    if lowered in ("true", "1"):
        return True
    if lowered in ("false", "0"):
        return False
    raise HTTPException(400, f"{name} must be true or false, not {raw[:20]!r}")


def date_param(raw: str | None, name: str) -> date | None:
    """An ISO ``YYYY-MM-DD`` query parameter (UTC day), or HTTPException 400."""
    if raw is None or raw == "":
        return None
    try:
        return date.fromisoformat(raw)
    except ValueError:
        raise HTTPException(400, f"{name} must be a date YYYY-MM-DD, not {raw[:20]!r}") from None


def day_bounds_s(params: QueryParams) -> tuple[float | None, float | None]:
    """``start_date`` (from its midnight) and ``end_date`` (through its end) in epoch seconds."""
    start = date_param(params.get("start_date"), "start_date")
    end = date_param(params.get("end_date"), "end_date")
    return (
        None if start is None else epoch_s(start),
        # Midnight after ``end``, added in seconds: date.max has no next day.
        None if end is None else epoch_s(end) + DAY_S,
    )


def epoch_s(day: date) -> float:
    """Midnight UTC at the start of ``day``, in epoch seconds."""
    return datetime(day.year, day.month, day.day, tzinfo=timezone.utc).timestamp()


def iso_utc(timestamp_s: float) -> str:
    """An epoch timestamp as the API writes datetimes: ISO 8601 in UTC."""
    return datetime.fromtimestamp(timestamp_s, tz=timezone.utc).isoformat()
