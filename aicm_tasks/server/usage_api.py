"""The SDK client's usage reads: ``/usage/events/``, ``/usage/event/{id}/``, ``/usage/rollups/``.

Shapes of ``aicostmanager.models.UsageEvent`` and ``UsageRollup`` (SDK 0.3.2),
read from the ledger as stored; our own ``GET /usage/events`` (no trailing
slash, used by the CLI and tests) keeps its shape in ``app.py``.

How the ledger's words map onto the SDK's:

- ``event_id``: the event's row number as a UUID (``00000000-...-000000000007``):
  stable, URL-safe and found again without an extra index. ``get_usage_event``
  also takes a ``response_id``.
- ``service_id``: the record's ``service_key`` (``openai::gpt-4o-mini``);
  ``config_id``: its vendor (``openai``).
- ``status``: ``completed`` when the catalog priced the record, ``queued`` when
  not (a learned service key), as ``/track`` answered it.
- A rollup is a row of ``daily_rollups``: one per UTC day, service key and
  customer; ``quantity`` is its tokens (input + output), ``cost`` its USD.
  Only ``granularity=daily`` exists in the ledger (``hourly`` is a 400).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import QueryParams
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from aicm_tasks.contract import split_service_key
from aicm_tasks.server.ledger import EventStore
from aicm_tasks.server.pages import (
    date_param,
    day_bounds_s,
    iso_utc,
    page,
    page_request,
    text_list_param,
    text_param,
)

#: Columns read for a usage event, in the order :func:`usage_event` takes them.
EVENT_READ_COLUMNS = (
    "seq, response_id, service_key, customer_key, timestamp, payload, context, cost_nano_usd"
)
#: Rollup granularities the SDK may ask for; the ledger keeps daily rows only.
GRANULARITIES = ("daily",)


@dataclass
class EventFilter:
    """A ``WHERE`` clause over ``events`` in ``?`` style, built one condition at a time."""

    clauses: list[str] = field(default_factory=list)
    params: list[Any] = field(default_factory=list)

    def equal_to_any(self, column: str, values: Sequence[Any]) -> None:
        """Keep rows whose ``column`` is one of ``values`` (no condition when empty)."""
        if values:
            self.clauses.append(f"{column} IN ({', '.join('?' for _ in values)})")
            self.params.extend(values)

    def where(self, column: str, operator: str, value: Any) -> None:
        """Keep rows where ``column operator value`` (no condition when value is None)."""
        if value is not None:
            self.clauses.append(f"{column} {operator} ?")
            self.params.append(value)

    def condition(self, clause: str, *values: Any) -> None:
        """Keep rows where ``clause`` (with a ``?`` per value) holds."""
        self.clauses.append(clause)
        self.params.extend(values)

    def sql(self) -> str:
        """`` WHERE ...``, or ``""`` when nothing is filtered."""
        return " WHERE " + " AND ".join(self.clauses) if self.clauses else ""


def event_filter(params: QueryParams, *, service_param: str = "service_id") -> EventFilter:
    """The filters the SDK sends for events: keys, ``start_date`` / ``end_date`` (UTC days)."""
    where = EventFilter()
    where.equal_to_any("service_key", text_list_param(params, service_param))
    where.equal_to_any("customer_key", text_list_param(params, "customer_key"))
    where.where("response_id", "=", text_param(params.get("response_id"), "response_id"))
    config_id = text_param(params.get("config_id"), "config_id")
    if config_id is not None:
        # The vendor part of the key; LIKE would take _ and % in the value as wildcards.
        where.condition("substr(service_key, 1, ?) = ?", len(config_id) + 2, f"{config_id}::")
    start_s, end_s = day_bounds_s(params)
    where.where("timestamp", ">=", start_s)
    where.where("timestamp", "<", end_s)
    return where


def event_id(seq: int) -> str:
    """The SDK's ``event_id`` of the event stored at row ``seq``."""
    return str(uuid.UUID(int=seq))


def seq_of(event_id_or_response_id: str) -> int | None:
    """The row number behind an ``event_id``, or None if it is not one of ours.

    Only the canonical spelling counts, so a response_id that merely parses as
    a UUID (32 hex digits) is looked up as a response_id.
    """
    try:
        seq = uuid.UUID(event_id_or_response_id).int
    except ValueError:
        return None
    return seq if 0 < seq < 2**63 and event_id(seq) == event_id_or_response_id else None


def usage_event(row: Sequence[Any]) -> dict[str, Any]:
    """An ``events`` row (:data:`EVENT_READ_COLUMNS`) as the SDK's ``UsageEvent``."""
    seq, response_id, service_key, customer_key, timestamp, payload, context, cost = row
    parts = split_service_key(service_key)
    return {
        "event_id": event_id(int(seq)),
        "config_id": parts[0] if parts is not None else service_key,
        "service_id": service_key,
        "timestamp": iso_utc(float(timestamp)),
        "response_id": response_id,
        "customer_key": customer_key,
        "usage": json.loads(payload),
        "base_url": None,
        "context": None if context is None else json.loads(context),
        "status": "queued" if cost is None else "completed",
    }


def list_usage_events(
    store: EventStore, where: EventFilter, limit: int, offset: int
) -> tuple[int, list[dict[str, Any]]]:
    """How many events match, and the page of them in arrival order.

    Every page counts its matches again (the SDK's pages carry ``count``) and
    skips ``offset`` rows: measured on SQLite at 1,000,000 events, the count
    takes ~20 ms (~170 ms filtered by customer, which has no index) and the
    deepest offset ~100 ms, so reading a whole large ledger through the client
    is minutes, not hours; fine for the local server, not a bulk export.
    """
    (count,) = store.query(f"SELECT COUNT(*) FROM events{where.sql()}", where.params)[0]
    rows = store.query(
        f"SELECT {EVENT_READ_COLUMNS} FROM events{where.sql()} ORDER BY seq LIMIT ? OFFSET ?",
        [*where.params, limit, offset],
    )
    return int(count), [usage_event(row) for row in rows]


def find_usage_event(store: EventStore, key: str) -> dict[str, Any] | None:
    """The event with ``event_id`` ``key``, else the one with ``response_id`` ``key``."""
    seq = seq_of(key)
    if seq is not None:
        rows = store.query(f"SELECT {EVENT_READ_COLUMNS} FROM events WHERE seq = ?", [seq])
        if rows:
            return usage_event(rows[0])
    rows = store.query(f"SELECT {EVENT_READ_COLUMNS} FROM events WHERE response_id = ?", [key])
    return usage_event(rows[0]) if rows else None


def rollup_filter(params: QueryParams) -> EventFilter:
    """The filters the SDK sends for rollups, over ``daily_rollups``; HTTPException 400 if bad."""
    granularity = params.get("granularity") or "daily"
    if granularity not in GRANULARITIES:
        raise HTTPException(400, f"granularity must be one of {', '.join(GRANULARITIES)}")
    where = EventFilter()
    where.equal_to_any("service_key", text_list_param(params, "service_id"))
    # No customer is stored as '' in the rollups (schema.py), so '' never matches one.
    where.equal_to_any("customer_key", text_list_param(params, "customer_key"))
    for name, operator in (("start_date", ">="), ("end_date", "<=")):
        day = date_param(params.get(name), name)
        # YYYY-MM-DD strings compare as the days they name.
        where.where("day", operator, None if day is None else day.isoformat())
    return where


def list_usage_rollups(
    store: EventStore, where: EventFilter, limit: int, offset: int
) -> tuple[int, list[dict[str, Any]]]:
    """How many daily rollups match, and the page of them by day, service, customer."""
    (count,) = store.query(f"SELECT COUNT(*) FROM daily_rollups{where.sql()}", where.params)[0]
    rows = store.query(
        "SELECT day, service_key, customer_key, input_tokens + output_tokens, cost_nano_usd"
        f" FROM daily_rollups{where.sql()}"
        " ORDER BY day, service_key, customer_key LIMIT ? OFFSET ?",
        [*where.params, limit, offset],
    )
    return int(count), [
        {
            "customer_key": customer_key or None,
            "service_id": service_key,
            "date": day,
            "quantity": float(tokens),
            "cost": int(cost_nano_usd) / 1e9,
        }
        for day, service_key, customer_key, tokens, cost_nano_usd in rows
    ]


async def usage_events_page(request: Request, store: EventStore) -> Response:
    """``GET /usage/events/``: a page of ``UsageEvent``."""
    page_at = page_request(request.query_params)
    where = event_filter(request.query_params)
    count, results = await run_in_threadpool(
        list_usage_events, store, where, page_at.limit, page_at.offset
    )
    return JSONResponse(page(request, page_at, count, results))


async def usage_event_detail(request: Request, store: EventStore) -> Response:
    """``GET /usage/event/{event_id}/``: one ``UsageEvent`` (by event_id or response_id)."""
    key: str = request.path_params["event_id"]
    event = await run_in_threadpool(find_usage_event, store, key)
    if event is None:
        raise HTTPException(404, f"no usage event {key[:100]!r}")
    return JSONResponse(event)


async def usage_rollups_page(request: Request, store: EventStore) -> Response:
    """``GET /usage/rollups/``: a page of daily ``UsageRollup``."""
    page_at = page_request(request.query_params)
    where = rollup_filter(request.query_params)
    count, results = await run_in_threadpool(
        list_usage_rollups, store, where, page_at.limit, page_at.offset
    )
    return JSONResponse(page(request, page_at, count, results))
