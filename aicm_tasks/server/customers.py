"""Customers, as the SDK client manages them: ``/customers/`` and ``/customers/{id}/``.

A table beside the ledger (``customers``), created when the server starts;
shapes of ``aicostmanager.models.CustomerIn`` / ``CustomerOut``. A customer is
addressed by its ``uuid`` or, as a convenience, by its ``customer_key``. The
ledger does not need a customer to exist: records carry any ``customer_key``.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from aicm_tasks.contract import MAX_KEY_LENGTH
from aicm_tasks.server.ledger import EventStore
from aicm_tasks.server.pages import page, page_request, text_param
from aicm_tasks.server.sdk_bodies import read_model

#: The table, in SQL both databases speak.
CUSTOMERS_DDL = (
    "CREATE TABLE IF NOT EXISTS customers ("
    " uuid TEXT PRIMARY KEY,"
    " customer_key TEXT NOT NULL UNIQUE,"
    " name TEXT, phone TEXT, email TEXT,"
    " created_at DOUBLE PRECISION NOT NULL)"
)
_COLUMNS = "uuid, customer_key, name, phone, email"
#: Longest name, phone or e-mail accepted, in characters.
MAX_FIELD_LENGTH = 1000


class CustomerBody(BaseModel):
    """A customer as the SDK sends it (``CustomerIn``)."""

    model_config = ConfigDict(extra="ignore")

    customer_key: str = Field(min_length=1, max_length=MAX_KEY_LENGTH)
    name: str | None = Field(default=None, max_length=MAX_FIELD_LENGTH)
    phone: str | None = Field(default=None, max_length=MAX_FIELD_LENGTH)
    email: str | None = Field(default=None, max_length=MAX_FIELD_LENGTH)


def _out(row: tuple[Any, ...]) -> dict[str, Any]:
    return dict(zip(("uuid", "customer_key", "name", "phone", "email"), row, strict=True))


def _find(store: EventStore, key: str) -> dict[str, Any] | None:
    rows = store.query(
        f"SELECT {_COLUMNS} FROM customers WHERE uuid = ? OR customer_key = ?"
        " ORDER BY CASE WHEN uuid = ? THEN 0 ELSE 1 END",
        [key, key, key],
    )
    return _out(rows[0]) if rows else None


def _key_taken(store: EventStore, customer_key: str, other_than: str | None = None) -> bool:
    rows = store.query("SELECT uuid FROM customers WHERE customer_key = ?", [customer_key])
    return any(uuid_ != other_than for (uuid_,) in rows)


def create(store: EventStore, body: CustomerBody) -> dict[str, Any]:
    """Store a new customer; HTTPException 409 if its ``customer_key`` exists."""
    rows = store.execute(
        f"INSERT INTO customers ({_COLUMNS}, created_at) VALUES (?, ?, ?, ?, ?, ?)"
        f" ON CONFLICT DO NOTHING RETURNING {_COLUMNS}",
        [str(uuid.uuid4()), body.customer_key, body.name, body.phone, body.email, time.time()],
    )
    if not rows:
        raise HTTPException(409, f"customer {body.customer_key!r} exists")
    return _out(rows[0])


def update(store: EventStore, key: str, body: CustomerBody) -> dict[str, Any] | None:
    """Replace a customer's fields; None if there is none; 409 if the new key is taken."""
    found = _find(store, key)
    if found is None:
        return None
    if _key_taken(store, body.customer_key, other_than=found["uuid"]):
        raise HTTPException(409, f"customer {body.customer_key!r} exists")
    rows = store.execute(
        "UPDATE customers SET customer_key = ?, name = ?, phone = ?, email = ?"
        f" WHERE uuid = ? RETURNING {_COLUMNS}",
        [body.customer_key, body.name, body.phone, body.email, found["uuid"]],
    )
    return _out(rows[0]) if rows else None


def delete(store: EventStore, key: str) -> bool:
    """Delete a customer (its events stay in the ledger); False if there is none."""
    found = _find(store, key)
    if found is None:
        return False
    return bool(
        store.execute("DELETE FROM customers WHERE uuid = ? RETURNING uuid", [found["uuid"]])
    )


def list_page(
    store: EventStore, filters: dict[str, str], limit: int, offset: int
) -> tuple[int, list[dict[str, Any]]]:
    """How many customers match ``filters`` (column -> exact value), and a page by creation."""
    where = " AND ".join(f"{column} = ?" for column in filters)
    sql_where = f" WHERE {where}" if where else ""
    values = list(filters.values())
    (count,) = store.query(f"SELECT COUNT(*) FROM customers{sql_where}", values)[0]
    rows = store.query(
        f"SELECT {_COLUMNS} FROM customers{sql_where} ORDER BY created_at, uuid LIMIT ? OFFSET ?",
        [*values, limit, offset],
    )
    return int(count), [_out(row) for row in rows]


async def customers_collection(request: Request, store: EventStore) -> Response:
    """``GET /customers/``: a page of customers; ``POST``: create one (201)."""
    if request.method == "POST":
        body = await read_model(request, CustomerBody)
        return JSONResponse(await run_in_threadpool(create, store, body), status_code=201)
    params = request.query_params
    page_at = page_request(params)
    filters = {
        name: value
        for name in ("customer_key", "name", "phone")
        if (value := text_param(params.get(name), name)) is not None
    }
    count, results = await run_in_threadpool(
        list_page, store, filters, page_at.limit, page_at.offset
    )
    return JSONResponse(page(request, page_at, count, results))


async def customer_item(request: Request, store: EventStore) -> Response:
    """``GET``, ``PUT`` or ``DELETE /customers/{uuid or customer_key}/``."""
    key: str = request.path_params["customer_id"]
    if request.method == "PUT":
        body = await read_model(request, CustomerBody)
        found = await run_in_threadpool(update, store, key, body)
    elif request.method == "DELETE":
        if not await run_in_threadpool(delete, store, key):
            raise HTTPException(404, f"no customer {key[:100]!r}")
        return Response(status_code=204)
    else:
        found = await run_in_threadpool(_find, store, key)
    if found is None:
        raise HTTPException(404, f"no customer {key[:100]!r}")
    return JSONResponse(found)
