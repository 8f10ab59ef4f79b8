"""Custom services, as the SDK client manages them: ``/custom-services/`` and ``/custom-services/{uuid}/``.

A table beside the ledger (``custom_services``), created when the server
starts; shapes of ``aicostmanager.models.CustomServiceIn`` / ``CustomServiceOut``
/ ``CustomServiceSummaryOut``. The configuration is kept as sent (its cost
units checked); ``DELETE`` marks a service deleted, as the API's ``is_deleted``
says, and lists leave deleted services out unless ``is_deleted=true`` is asked.

An active custom service whose key is of the form ``vendor::service`` is taught
to the catalog (as ``PUT /services/{key}`` does, and again at every start), so
``/track`` stores its records instead of answering ``service_key_unknown``. The
ledger does not price them from the cost units (their records are ``queued``,
without cost); deleting a service does not make ``/track`` forget its key until
the server restarts.
"""

from __future__ import annotations

import functools
import json
import time
import uuid
from decimal import Decimal
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from aicm_tasks.contract import split_service_key
from aicm_tasks.server.catalog import ServiceCatalog
from aicm_tasks.server.ledger import EventStore
from aicm_tasks.server.pages import bool_param, iso_utc
from aicm_tasks.server.pricing import plain
from aicm_tasks.server.sdk_bodies import read_model

#: The table, in SQL both databases speak (booleans as 0/1).
CUSTOM_SERVICES_DDL = (
    "CREATE TABLE IF NOT EXISTS custom_services ("
    " uuid TEXT PRIMARY KEY,"
    " custom_service_key TEXT NOT NULL,"
    " configuration TEXT NOT NULL,"
    " is_active BIGINT NOT NULL,"
    " is_deleted BIGINT NOT NULL DEFAULT 0,"
    " created_at DOUBLE PRECISION NOT NULL,"
    " updated_at DOUBLE PRECISION NOT NULL)"
)
_COLUMNS = "uuid, custom_service_key, configuration, is_active, is_deleted, created_at, updated_at"
#: Where the hosted API names the owning team.
LOCAL_TEAM_UUID = "local"
LOCAL_TEAM_NAME = "local"


class CostUnitBody(BaseModel):
    """One cost unit of a custom service (``CustomCostUnitIn``)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100)
    cost: Decimal = Field(ge=0)
    unit: str = Field(min_length=1, max_length=20)
    per_quantity: int = Field(default=1, ge=1)
    min_units: int = Field(default=0, ge=0)
    max_units: int = Field(default=10_000_000, ge=0)
    currency: str = Field(default="USD", min_length=3, max_length=3)
    is_active: bool = True


class ConfigurationBody(BaseModel):
    """A custom service's configuration: cost units checked, the rest kept as sent."""

    model_config = ConfigDict(extra="forbid")

    cost_units: list[CostUnitBody]
    mappings: list[dict[str, Any]] | None = None
    mapping_groups: list[dict[str, Any]] | None = None
    exclusions: list[dict[str, Any]] | None = None


class CustomServiceBody(BaseModel):
    """A custom service as the SDK sends it (``CustomServiceIn``)."""

    model_config = ConfigDict(extra="ignore")

    custom_service_key: str = Field(min_length=1, max_length=100)
    configuration: ConfigurationBody
    is_active: bool = True


def _configuration_json(body: CustomServiceBody) -> str:
    document = body.configuration.model_dump(mode="python", exclude_none=True)
    for unit in document["cost_units"]:
        unit["cost"] = plain(unit["cost"])  # exact, as the API writes amounts
    return json.dumps(document, separators=(",", ":"))


def _summary(row: tuple[Any, ...]) -> dict[str, Any]:
    uuid_, key, configuration, is_active, is_deleted, created_at, updated_at = row
    return {
        "uuid": uuid_,
        "custom_service_key": key,
        "is_active": bool(is_active),
        "is_deleted": bool(is_deleted),
        "created_at": iso_utc(float(created_at)),
        "updated_at": iso_utc(float(updated_at)),
        "cost_units_count": len(json.loads(configuration)["cost_units"]),
    }


def _full(row: tuple[Any, ...]) -> dict[str, Any]:
    configuration = json.loads(row[2])
    document = _summary(row)
    del document["cost_units_count"]
    document.update(
        configuration=configuration,
        cost_units=configuration["cost_units"],
        team_uuid=LOCAL_TEAM_UUID,
        team_name=LOCAL_TEAM_NAME,
    )
    return document


def _learn(catalog: ServiceCatalog, body: CustomServiceBody) -> None:
    if body.is_active and split_service_key(body.custom_service_key) is not None:
        catalog.learn(body.custom_service_key)


def learn_active(store: EventStore, catalog: ServiceCatalog) -> None:
    """Teach ``catalog`` every active custom service's key (at start)."""
    for (key,) in store.query(
        "SELECT custom_service_key FROM custom_services WHERE is_active = 1 AND is_deleted = 0"
    ):
        if split_service_key(key) is not None:
            catalog.learn(key)


def _key_taken(store: EventStore, key: str, other_than: str | None = None) -> bool:
    rows = store.query(
        "SELECT uuid FROM custom_services WHERE custom_service_key = ? AND is_deleted = 0", [key]
    )
    return any(found != other_than for (found,) in rows)


def create(store: EventStore, catalog: ServiceCatalog, body: CustomServiceBody) -> dict[str, Any]:
    """Store a new custom service; HTTPException 409 if a live one has its key."""
    if _key_taken(store, body.custom_service_key):
        raise HTTPException(409, f"custom service {body.custom_service_key!r} exists")
    now = time.time()
    rows = store.execute(
        f"INSERT INTO custom_services ({_COLUMNS}) VALUES (?, ?, ?, ?, 0, ?, ?) RETURNING {_COLUMNS}",
        [
            str(uuid.uuid4()),
            body.custom_service_key,
            _configuration_json(body),
            int(body.is_active),
            now,
            now,
        ],
    )
    _learn(catalog, body)
    return _full(rows[0])


def find(store: EventStore, service_uuid: str) -> dict[str, Any] | None:
    """The live custom service ``service_uuid``, or None."""
    rows = store.query(
        f"SELECT {_COLUMNS} FROM custom_services WHERE uuid = ? AND is_deleted = 0", [service_uuid]
    )
    return _full(rows[0]) if rows else None


def update(
    store: EventStore, catalog: ServiceCatalog, service_uuid: str, body: CustomServiceBody
) -> dict[str, Any] | None:
    """Replace a live custom service; None if there is none; 409 if the new key is taken."""
    if _key_taken(store, body.custom_service_key, other_than=service_uuid):
        raise HTTPException(409, f"custom service {body.custom_service_key!r} exists")
    rows = store.execute(
        "UPDATE custom_services SET custom_service_key = ?, configuration = ?, is_active = ?,"
        f" updated_at = ? WHERE uuid = ? AND is_deleted = 0 RETURNING {_COLUMNS}",
        [
            body.custom_service_key,
            _configuration_json(body),
            int(body.is_active),
            time.time(),
            service_uuid,
        ],
    )
    if not rows:
        return None
    _learn(catalog, body)
    return _full(rows[0])


def delete(store: EventStore, service_uuid: str) -> bool:
    """Mark a live custom service deleted; False if there is none."""
    return bool(
        store.execute(
            "UPDATE custom_services SET is_deleted = 1, is_active = 0, updated_at = ?"
            " WHERE uuid = ? AND is_deleted = 0 RETURNING uuid",
            [time.time(), service_uuid],
        )
    )


def list_summaries(
    store: EventStore,
    *,
    is_active: bool | None,
    is_deleted: bool | None,
    has_cost_units: bool | None,
) -> list[dict[str, Any]]:
    """Summaries by creation; deleted services only when ``is_deleted`` is true."""
    clauses, params = ["is_deleted = ?"], [int(bool(is_deleted))]
    if is_active is not None:
        clauses.append("is_active = ?")
        params.append(int(is_active))
    rows = store.query(
        f"SELECT {_COLUMNS} FROM custom_services WHERE {' AND '.join(clauses)}"
        " ORDER BY created_at, uuid",
        params,
    )
    summaries = [_summary(row) for row in rows]
    if has_cost_units is None:
        return summaries
    return [s for s in summaries if (s["cost_units_count"] > 0) == has_cost_units]


async def custom_services_collection(
    request: Request, store: EventStore, catalog: ServiceCatalog
) -> Response:
    """``GET /custom-services/``: summaries (a list); ``POST``: create one (201)."""
    if request.method == "POST":
        body = await read_model(request, CustomServiceBody)
        return JSONResponse(await run_in_threadpool(create, store, catalog, body), status_code=201)
    flags = {
        name: bool_param(request.query_params.get(name), name)
        for name in ("is_active", "is_deleted", "has_cost_units")
    }
    summaries = await run_in_threadpool(functools.partial(list_summaries, store, **flags))
    return JSONResponse(summaries)


async def custom_service_item(
    request: Request, store: EventStore, catalog: ServiceCatalog
) -> Response:
    """``GET``, ``PUT`` or ``DELETE /custom-services/{uuid}/``."""
    service_uuid: str = request.path_params["service_uuid"]
    if request.method == "PUT":
        body = await read_model(request, CustomServiceBody)
        found = await run_in_threadpool(update, store, catalog, service_uuid, body)
    elif request.method == "DELETE":
        if not await run_in_threadpool(delete, store, service_uuid):
            raise HTTPException(404, f"no custom service {service_uuid[:100]!r}")
        return Response(status_code=204)
    else:
        found = await run_in_threadpool(find, store, service_uuid)
    if found is None:
        raise HTTPException(404, f"no custom service {service_uuid[:100]!r}")
    return JSONResponse(found)
