"""The local ``/track``-compatible server as a Starlette application.

HTTP only: authentication, body limits, query parameters and status codes.
What a ``/track`` body means is in ``track.py``; storage in ``store.py``;
cost reports and budgets in ``reports.py``.

Routes (all but ``/healthz`` need ``Authorization: Bearer <api key>``)::

    POST /api/v1/track                     the contract's endpoint
    GET  /api/v1/stats                     counters: events, received, duplicates, ...
    GET  /api/v1/usage/events              stored events, paged and filtered
    GET  /api/v1/costs                     cost report, grouped by day, model, customer, ...
    GET  /api/v1/budget-status             this month's spend against the budget
    PUT  /api/v1/services/{service_key}    teach the catalog a service key
    ...  /api/v1/usage-limits/, /api/v1/triggered-limits, /api/v1/webhooks/
                                           usage limits and webhooks (``limits_api.py``)
    GET  /healthz                          liveness, no key needed

and the official SDK client's reads (``/usage/events/``, ``/costs/``,
``/customers/``, ``/vendors/``, ...: paths ending in ``/``), in ``sdk_api.py``.

Every ``/track`` answer carries ``triggered_limits``: the limits tripped now,
signed as the official SDK decodes them (``limits.py``, ``signing.py``).

Errors are JSON ``{"detail": "..."}`` as the real API answers them: every bad
query parameter, path parameter or body is a 400 (a 413 when too large), never
a 500. Neither the API key nor request bodies are ever logged.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from aicm_tasks.contract import service_key_problem, text_problem
from aicm_tasks.errors import ConfigurationError
from aicm_tasks.server.catalog import ServiceCatalog
from aicm_tasks.server.limit_store import LimitStore
from aicm_tasks.server.limits import LimitBook
from aicm_tasks.server.limits_api import limit_routes
from aicm_tasks.server.pages import date_param, epoch_s, int_param, text_param
from aicm_tasks.server.pricing import PriceBook
from aicm_tasks.server.reports import (
    GROUP_BY,
    ROLLUP_COLUMN,
    budget_status,
    cost_report,
    default_range,
)
from aicm_tasks.server.sdk_api import sdk_routes
from aicm_tasks.server.signing import LimitSigner
from aicm_tasks.server.store import MAX_LIST_LIMIT, open_store
from aicm_tasks.server.track import STATUS_COMPLETED, TrackRequestError, handle_track_body
from aicm_tasks.server.webhooks import DEFAULT_BACKOFF_S, WebhookNotifier

logger = logging.getLogger(__name__)

#: Largest request body accepted by default, in bytes: 1000 records of ~10 KiB.
DEFAULT_MAX_BODY_BYTES = 10 * 1024 * 1024
#: Page size of ``GET /usage/events`` when ``limit`` is not given.
DEFAULT_LIST_LIMIT = 100
#: Prefix of every API route, as in the real API's default ``AICM_API_URL``.
API_PREFIX = "/api/v1"
#: Seconds in a UTC day: the end of an ``end`` date is its midnight plus one day.
_DAY_S = 86400

Handler = Callable[[Request], Awaitable[Response]]


def create_server_app(
    *,
    api_key: str,
    db: str = ":memory:",
    catalog: ServiceCatalog | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    monthly_budget_usd: float | None = None,
    customer_budgets_usd: Mapping[str, float] | None = None,
    keys_dir: Path | None = None,
    webhook_backoff_s: float = DEFAULT_BACKOFF_S,
) -> Starlette:
    """Build the server: requests must carry ``api_key``; events go to ``db``.

    ``db`` is an SQLite path (``":memory:"`` by default) or a ``postgresql://``
    URL. ``catalog`` defaults to a fresh :class:`ServiceCatalog`;
    ``max_body_bytes`` bounds one request body. ``monthly_budget_usd`` is the
    budget of all spend and ``customer_budgets_usd`` those of single customers,
    for ``/budget-status``. ``keys_dir`` holds the key pair that signs
    ``triggered_limits`` (created there if absent; None: a pair in memory
    only). ``webhook_backoff_s`` is the wait before a webhook's first retry.
    The store and catalog are on ``app.state`` (tests read them). The store is
    closed when the application shuts down.
    Raises :class:`ConfigurationError` if ``api_key`` is empty.
    """
    if not api_key:
        raise ConfigurationError("the local server needs an API key (AICM_SERVER_API_KEY)")
    if max_body_bytes <= 0:
        raise ValueError("max_body_bytes must be positive")
    store = open_store(db)
    known = catalog if catalog is not None else ServiceCatalog()
    prices = PriceBook()
    budgets = dict(customer_budgets_usd or {})
    expected_key = api_key.encode("utf-8")
    limit_store = LimitStore(db)
    notifier = WebhookNotifier(limit_store, backoff_s=webhook_backoff_s)
    book = LimitBook(
        ledger=store,
        limits=limit_store,
        signer=LimitSigner(keys_dir),
        notify=notifier.notify,
        # The SDK matches a trip to its key by the part after the last dot (its
        # key id); a key without a dot is all secret, so it is never sent.
        api_key_id=api_key.rpartition(".")[2] if "." in api_key else None,
    )

    def authorized(handler: Handler) -> Handler:
        async def guarded(request: Request) -> Response:
            scheme, _, token = request.headers.get("authorization", "").partition(" ")
            # compare_digest: the time taken must not reveal how much of the key matched.
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                token.strip().encode("utf-8"), expected_key
            ):
                return JSONResponse(
                    {"detail": "Invalid or missing API key (Authorization: Bearer <key>)"},
                    status_code=401,
                    headers={"WWW-Authenticate": "Bearer"},
                )
            for name, value in request.path_params.items():
                # An id no record or row can hold: PostgreSQL refused the NUL
                # with an error that was a 500.
                problem = text_problem(value) if isinstance(value, str) else None
                if problem is not None:
                    return JSONResponse({"detail": f"{name} {problem}"}, status_code=400)
            return await handler(request)

        return guarded

    async def track(request: Request) -> Response:
        body = await _read_body(request, max_body_bytes)
        try:
            # Parsing, validation and the SQLite commit are blocking work; off the event loop.
            document = await run_in_threadpool(
                handle_track_body, body, catalog=known, prices=prices, store=store
            )
        except TrackRequestError as exc:
            return JSONResponse({"detail": exc.detail}, status_code=exc.status_code)
        stored_cost = any(r.get("status") == STATUS_COMPLETED for r in document["results"])
        triggered = await run_in_threadpool(book.answer, stored_cost=stored_cost)
        if triggered is not None:
            document["triggered_limits"] = triggered
        return AsciiJSONResponse(document)

    async def stats(request: Request) -> Response:
        return JSONResponse(await run_in_threadpool(store.stats))

    async def usage_events(request: Request) -> Response:
        params = request.query_params
        limit = min(int_param(params.get("limit"), "limit", DEFAULT_LIST_LIMIT), MAX_LIST_LIMIT)
        offset = int_param(params.get("offset"), "offset", 0)
        start = date_param(params.get("start"), "start")
        end = date_param(params.get("end"), "end")
        events = await run_in_threadpool(
            store.list_events,
            limit,
            offset,
            service_key=text_param(params.get("service_key"), "service_key"),
            customer_key=text_param(params.get("customer_key"), "customer_key"),
            start_s=None if start is None else epoch_s(start),
            # Midnight after ``end``, added in seconds: date.max has no next day.
            end_s=None if end is None else epoch_s(end) + _DAY_S,
        )
        return JSONResponse({"events": events, "limit": limit, "offset": offset})

    async def costs(request: Request) -> Response:
        params = request.query_params
        group_by = params.get("group_by") or "day"
        if group_by not in GROUP_BY:
            raise HTTPException(400, f"group_by must be one of {', '.join(GROUP_BY)}")
        first, last = default_range(_today())
        start = date_param(params.get("start"), "start") or first
        end = date_param(params.get("end"), "end") or max(last, start)
        if end < start:
            raise HTTPException(400, "end must not be before start")
        rows = await run_in_threadpool(
            store.rollups,
            start.isoformat(),
            end.isoformat(),
            customer_key=text_param(params.get("customer_key"), "customer_key"),
            service_key=text_param(params.get("service_key"), "service_key"),
            # The database sums over everything but the one column the grouping needs.
            group_by=(ROLLUP_COLUMN[group_by],),
        )
        return JSONResponse(cost_report(rows, start=start, end=end, group_by=group_by))

    async def budget(request: Request) -> Response:
        params = request.query_params
        as_of = date_param(params.get("as_of"), "as_of") or _today()
        customer_key = text_param(params.get("customer_key"), "customer_key")
        first_day = as_of.replace(day=1).isoformat()
        rows = await run_in_threadpool(
            store.rollups,
            first_day,
            as_of.isoformat(),
            customer_key=customer_key,
            group_by=("customer_key",),
        )
        if customer_key is not None:
            return JSONResponse(
                budget_status(
                    rows,
                    as_of=as_of,
                    monthly_budget=budgets.get(customer_key),
                    customer_key=customer_key,
                )
            )
        document = budget_status(rows, as_of=as_of, monthly_budget=monthly_budget_usd)
        document["customers"] = [
            budget_status(
                [row for row in rows if row.customer_key == key],
                as_of=as_of,
                monthly_budget=amount,
                customer_key=key,
            )
            for key, amount in sorted(budgets.items())
        ]
        return JSONResponse(document)

    async def learn_service(request: Request) -> Response:
        service_key: str = request.path_params["service_key"]
        problem = service_key_problem(service_key)
        if problem is not None:
            raise HTTPException(400, str(problem))
        known.learn(service_key)
        return JSONResponse({"service_key": service_key, "known": True})

    async def healthz(request: Request) -> Response:
        return JSONResponse({"ok": True})

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        logger.info(
            "local /track server ready: %s ledger at %s, genai-prices %s",
            store.backend,
            store.location,
            known.catalog_version,
        )
        try:
            yield
        finally:
            notifier.stop()
            limit_store.close()
            store.close()

    app = Starlette(
        routes=[
            Route(f"{API_PREFIX}/track", authorized(track), methods=["POST"]),
            Route(f"{API_PREFIX}/stats", authorized(stats), methods=["GET"]),
            Route(f"{API_PREFIX}/usage/events", authorized(usage_events), methods=["GET"]),
            Route(f"{API_PREFIX}/costs", authorized(costs), methods=["GET"]),
            Route(f"{API_PREFIX}/budget-status", authorized(budget), methods=["GET"]),
            Route(
                f"{API_PREFIX}/services/{{service_key:path}}",
                authorized(learn_service),
                methods=["PUT"],
            ),
            *limit_routes(API_PREFIX, book=book, limits=limit_store, guard=authorized),
            Route("/healthz", healthz, methods=["GET"]),
            # The SDK client's reads (paths ending in /), beside ours: sdk_api.py.
            *sdk_routes(
                API_PREFIX, store=store, catalog=known, prices=prices, authorized=authorized
            ),
        ],
        exception_handlers={HTTPException: _http_error},
        lifespan=lifespan,
    )
    app.state.store = store
    app.state.catalog = known
    app.state.prices = prices
    app.state.limits = book
    return app


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, or HTTPException 413 as soon as it exceeds ``limit`` bytes.

    Content-Length is checked first so an honest oversized request is refused
    unread; the running count catches chunked bodies and lying headers.
    """
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            declared_bytes = int(declared)
        except ValueError:
            raise HTTPException(400, "Content-Length is not a number") from None
        if declared_bytes > limit:
            raise HTTPException(413, f"request body of {declared_bytes} bytes is over {limit}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPException(413, f"request body is over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


class AsciiJSONResponse(JSONResponse):
    """JSON with every non-ASCII character escaped.

    ``/track`` echoes the ``response_id`` of a refused record, which may hold an
    unpaired surrogate (JSON can spell one, UTF-8 cannot carry it): Starlette's
    UTF-8 rendering would fail with a 500; ``\\udXXX`` escapes carry it intact.
    """

    def render(self, content: Any) -> bytes:
        return json.dumps(
            content, ensure_ascii=True, allow_nan=False, separators=(",", ":")
        ).encode("ascii")


def _today() -> date:
    """Today's date in UTC, the ledger's time zone."""
    return datetime.now(timezone.utc).date()


async def _http_error(request: Request, exc: Exception) -> Response:
    """Every HTTP error (404, 405, 413, ...) as the API's JSON ``{"detail": ...}``."""
    if not isinstance(exc, HTTPException):  # registered for HTTPException only
        raise exc
    return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)
