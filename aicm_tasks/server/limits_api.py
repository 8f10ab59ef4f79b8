"""The routes of usage limits, triggered limits and webhooks, as the SDK's client calls them.

Paths, bodies and answers are those of ``aicostmanager`` 0.3.2's
``CostManagerClient`` (``client/sync_client.py``, ``models/limits.py``,
``models/webhooks.py``), under the API prefix::

    GET    /usage-limits/            list_usage_limits          -> [UsageLimitOut]
    POST   /usage-limits/            create_usage_limit         -> UsageLimitOut (201)
    GET    /usage-limits/progress/   list_usage_limit_progress  -> [UsageLimitProgressOut]
    GET    /usage-limits/{id}/       get_usage_limit            -> UsageLimitOut
    PUT    /usage-limits/{id}/       update_usage_limit         -> UsageLimitOut
    DELETE /usage-limits/{id}/       delete_usage_limit         -> 204
    GET    /triggered-limits         get_triggered_limits       -> {"triggered_limits": {...}}
    GET    /webhooks/                list_webhook_endpoints     -> WebhookEndpointsResponse
    POST   /webhooks/                create_webhook_endpoint    -> WebhookEndpointOut (201)
    GET    /webhooks/{id}/           get_webhook_endpoint       -> WebhookEndpointOut
    PUT    /webhooks/{id}/           update_webhook_endpoint    -> WebhookEndpointOut
    DELETE /webhooks/{id}/           delete_webhook_endpoint    -> 204

A body that does not validate is a 400 with the reasons, an unknown id a 404.
Database work runs in the threadpool, off the event loop.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from aicm_tasks.server.limit_store import LimitStore
from aicm_tasks.server.limits import LimitBook, UsageLimitInput, limit_document
from aicm_tasks.server.sdk_bodies import read_model
from aicm_tasks.server.webhooks import WebhookInput, WebhookUpdate, webhook_document

#: Largest body of a limit or webhook request, in bytes: a few hundred suffice.
MAX_BODY_BYTES = 64 * 1024

Handler = Callable[[Request], Awaitable[Response]]

_TRUE = {"1", "true", "yes", "on"}


def limit_routes(
    prefix: str, *, book: LimitBook, limits: LimitStore, guard: Callable[[Handler], Handler]
) -> list[Route]:
    """The routes above under ``prefix``, each wrapped in ``guard`` (authentication)."""

    async def list_limits(request: Request) -> Response:
        rows = await run_in_threadpool(limits.limits)
        return JSONResponse([limit_document(row) for row in rows])

    async def create_limit(request: Request) -> Response:
        given = await read_model(request, UsageLimitInput, max_bytes=MAX_BODY_BYTES)
        row = given.row(str(uuid.uuid4()), time.time())
        await run_in_threadpool(_put_and_judge, limits, book, row)
        return JSONResponse(limit_document(row), status_code=201)

    async def progress(request: Request) -> Response:
        return JSONResponse(await run_in_threadpool(book.progress))

    async def get_limit(request: Request) -> Response:
        row = await run_in_threadpool(limits.limit, request.path_params["limit_id"])
        if row is None:
            raise HTTPException(404, "no usage limit has that id")
        return JSONResponse(limit_document(row))

    async def update_limit(request: Request) -> Response:
        limit_id: str = request.path_params["limit_id"]
        given = await read_model(request, UsageLimitInput, max_bytes=MAX_BODY_BYTES)
        existing = await run_in_threadpool(limits.limit, limit_id)
        if existing is None:
            raise HTTPException(404, "no usage limit has that id")
        row = given.row(limit_id, existing[10])
        await run_in_threadpool(_put_and_judge, limits, book, row)
        return JSONResponse(limit_document(row))

    async def delete_limit(request: Request) -> Response:
        deleted = await run_in_threadpool(limits.delete_limit, request.path_params["limit_id"])
        book.forget_limits()
        if not deleted:
            raise HTTPException(404, "no usage limit has that id")
        return Response(status_code=204)

    async def triggered(request: Request) -> Response:
        return JSONResponse({"triggered_limits": await run_in_threadpool(book.signed)})

    async def list_webhooks(request: Request) -> Response:
        active_only = request.query_params.get("active_only", "").lower() in _TRUE
        rows = await run_in_threadpool(limits.webhooks)
        shown = [row for row in rows if row[3] or not active_only]
        return JSONResponse(
            {
                "endpoints": [webhook_document(row) for row in shown],
                "total_count": len(rows),
                "active_count": sum(1 for row in rows if row[3]),
            }
        )

    async def create_webhook(request: Request) -> Response:
        given = await read_model(request, WebhookInput, max_bytes=MAX_BODY_BYTES)
        now = time.time()
        row = (str(uuid.uuid4()), given.url, given.secret, int(given.active), given.tolerance)
        full = (*row, now, now)
        await run_in_threadpool(limits.put_webhook, full)
        return JSONResponse(webhook_document(full), status_code=201)

    async def get_webhook(request: Request) -> Response:
        row = await run_in_threadpool(limits.webhook, request.path_params["webhook_id"])
        if row is None:
            raise HTTPException(404, "no webhook endpoint has that id")
        return JSONResponse(webhook_document(row))

    async def update_webhook(request: Request) -> Response:
        webhook_id: str = request.path_params["webhook_id"]
        changes = await read_model(request, WebhookUpdate, max_bytes=MAX_BODY_BYTES)
        row = await run_in_threadpool(limits.webhook, webhook_id)
        if row is None:
            raise HTTPException(404, "no webhook endpoint has that id")
        updated = (
            webhook_id,
            row[1] if changes.url is None else changes.url,
            row[2] if changes.secret is None else changes.secret,
            row[3] if changes.active is None else int(changes.active),
            row[4] if changes.tolerance is None else changes.tolerance,
            row[5],
            time.time(),
        )
        await run_in_threadpool(limits.put_webhook, updated)
        return JSONResponse(webhook_document(updated))

    async def delete_webhook(request: Request) -> Response:
        if not await run_in_threadpool(limits.delete_webhook, request.path_params["webhook_id"]):
            raise HTTPException(404, "no webhook endpoint has that id")
        return Response(status_code=204)

    limit_path = f"{prefix}/usage-limits/{{limit_id}}/"
    webhook_path = f"{prefix}/webhooks/{{webhook_id}}/"
    return [
        Route(f"{prefix}/usage-limits/", guard(list_limits), methods=["GET"]),
        Route(f"{prefix}/usage-limits/", guard(create_limit), methods=["POST"]),
        # Before {limit_id}/: "progress" would otherwise read as an id.
        Route(f"{prefix}/usage-limits/progress/", guard(progress), methods=["GET"]),
        Route(limit_path, guard(get_limit), methods=["GET"]),
        Route(limit_path, guard(update_limit), methods=["PUT"]),
        Route(limit_path, guard(delete_limit), methods=["DELETE"]),
        Route(f"{prefix}/triggered-limits", guard(triggered), methods=["GET"]),
        Route(f"{prefix}/webhooks/", guard(list_webhooks), methods=["GET"]),
        Route(f"{prefix}/webhooks/", guard(create_webhook), methods=["POST"]),
        Route(webhook_path, guard(get_webhook), methods=["GET"]),
        Route(webhook_path, guard(update_webhook), methods=["PUT"]),
        Route(webhook_path, guard(delete_webhook), methods=["DELETE"]),
    ]


def _put_and_judge(limits: LimitStore, book: LimitBook, row: tuple[Any, ...]) -> None:
    """Store a new or changed limit and judge it at once: it may be spent already."""
    limits.put_limit(row)
    book.forget_limits()
    book.judge()
