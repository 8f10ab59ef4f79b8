"""The SDK client's cost reads: ``GET /costs/`` (paged) and ``GET /cost-events/{response_id}``.

The ledger keeps one cost per event (whole nano-dollars) and the event's token
counts; the cost events are those ``/track`` answered for it: one per direction
(``input_tokens``, ``output_tokens``, and ``requests`` when the model has a
per-request price), rebuilt by pricing the stored tokens again with the
catalog. If that no longer gives the stored cost (genai-prices was upgraded
since), the event reads as one ``total`` cost event of the stored cost: what
these endpoints report always sums to the ledger. Events without a cost (learned
service keys the catalog cannot price) have no cost events.

``/costs/`` pages by usage event: ``count``, ``limit`` and ``offset`` count
priced events, and a page holds the cost events of its events (two or three
each). ``GET /costs`` without the slash is our own cost report (``app.py``).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from aicm_tasks.server.catalog import ServiceCatalog
from aicm_tasks.server.ledger import EventStore
from aicm_tasks.server.pages import iso_utc, page, page_request
from aicm_tasks.server.pricing import NANO_USD_PER_USD, PriceBook, plain
from aicm_tasks.server.usage_api import EventFilter, event_filter, event_id
from aicm_tasks.usage import TokenCounts

#: Columns read to rebuild an event's cost events, in the order :func:`cost_items` takes them.
COST_READ_COLUMNS = (
    "seq, response_id, service_key, customer_key, timestamp, context, input_tokens,"
    " output_tokens, cached_input_tokens, cache_write_tokens, reasoning_tokens,"
    " cost_nano_usd, catalog_version"
)
#: Names the local server gives where the hosted API names a team and an API key.
LOCAL_TEAM_ID = "local"
LOCAL_API_KEY_ID = "local"
#: Namespace of the cost events' UUIDs (uuid5 of the response_id and the unit).
_COST_EVENT_NAMESPACE = uuid.UUID("7d0f3c52-4a51-4f1e-9c53-2f8c1b6a9e10")


def cost_items(
    row: Sequence[Any], catalog: ServiceCatalog, prices: PriceBook
) -> list[dict[str, Any]]:
    """The cost events of an ``events`` row (:data:`COST_READ_COLUMNS`), as ``/track`` gave them."""
    service_key, timestamp = row[2], float(row[4])
    tokens = TokenCounts(*(int(value) for value in row[6:11]))
    stored_nano_usd, catalog_version = row[11], row[12]
    if stored_nano_usd is None:
        return []
    match = catalog.resolve(service_key)
    try:
        cost = None if match is None else prices.cost(match, tokens, timestamp)
    except ValueError:  # genai-prices refused the counts it once priced
        cost = None
    if cost is not None and cost.nano_usd == stored_nano_usd:
        return cost.cost_events(service_key, tokens)
    total = Decimal(int(stored_nano_usd)) / NANO_USD_PER_USD
    return [
        {
            "provider_id": match.provider_id if match is not None else service_key,
            "service_key": service_key,
            "cost_unit_id": "total",
            "quantity": 1,
            "cost_per_unit": plain(total),
            "cost": plain(total),
            "price_catalog": f"genai-prices {catalog_version}",
        }
    ]


def list_cost_events(
    store: EventStore,
    where: EventFilter,
    limit: int,
    offset: int,
    catalog: ServiceCatalog,
    prices: PriceBook,
) -> tuple[int, list[dict[str, Any]]]:
    """How many priced events match, and the cost events of a page of them."""
    where.condition("cost_nano_usd IS NOT NULL")
    (count,) = store.query(f"SELECT COUNT(*) FROM events{where.sql()}", where.params)[0]
    rows = store.query(
        f"SELECT {COST_READ_COLUMNS} FROM events{where.sql()} ORDER BY seq LIMIT ? OFFSET ?",
        [*where.params, limit, offset],
    )
    return int(count), [item for row in rows for item in cost_items(row, catalog, prices)]


def stored_cost_events(
    store: EventStore, response_id: str, catalog: ServiceCatalog, prices: PriceBook
) -> list[dict[str, Any]]:
    """The SDK's ``ApiCostEventOut`` list of one event; empty if none is stored."""
    rows = store.query(
        f"SELECT {COST_READ_COLUMNS} FROM events WHERE response_id = ?", [response_id]
    )
    events = []
    for row in rows:
        seq, customer_key, timestamp, context = row[0], row[3], float(row[4]), row[5]
        for item in cost_items(row, catalog, prices):
            unit = item["cost_unit_id"]
            events.append(
                {
                    "uuid": str(uuid.uuid5(_COST_EVENT_NAMESPACE, f"{response_id}\x00{unit}")),
                    "event_id": event_id(int(seq)),
                    "team_id": LOCAL_TEAM_ID,
                    "api_key_id": LOCAL_API_KEY_ID,
                    "timestamp": iso_utc(timestamp),
                    "customer_key": customer_key,
                    "response_id": response_id,
                    "provider_id": item["provider_id"],
                    "service_key": item["service_key"],
                    "cost_unit_id": unit,
                    "quantity": item["quantity"],
                    "cost_per_unit": item["cost_per_unit"],
                    "cost": item["cost"],
                    "context": None if context is None else json.loads(context),
                    # The ledger's rollups are written with the event, in one transaction.
                    "hourly_rollup_status": "completed",
                    "daily_rollup_status": "completed",
                }
            )
    return events


async def cost_events_page(
    request: Request, store: EventStore, catalog: ServiceCatalog, prices: PriceBook
) -> Response:
    """``GET /costs/``: the SDK's ``CostEventsResponse``."""
    page_at = page_request(request.query_params)
    where = event_filter(request.query_params, service_param="service_key")
    count, results = await run_in_threadpool(
        list_cost_events, store, where, page_at.limit, page_at.offset, catalog, prices
    )
    return JSONResponse(page(request, page_at, count, results))


async def cost_events_of_response(
    request: Request, store: EventStore, catalog: ServiceCatalog, prices: PriceBook
) -> Response:
    """``GET /cost-events/{response_id}``: its cost events (``[]`` when not stored)."""
    response_id: str = request.path_params["response_id"]
    events = await run_in_threadpool(stored_cost_events, store, response_id, catalog, prices)
    return JSONResponse(events)
