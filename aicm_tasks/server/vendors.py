"""The price catalog as the SDK client reads it: ``/vendors/``, ``/services/``, ``/service-costs/``.

Answered from genai-prices' bundled data (the catalog that prices ``/track``):

- a vendor is a genai-prices provider, ``name`` its id (``openai``, ``anthropic``,
  ``google``): the vendor part of a service key;
- a vendor's services are its models, ``service_id`` the model id, so
  ``f"{vendor}::{service_id}"`` is a service key ``/track`` prices;
- a service's costs are the model's prices in force now, one cost unit per
  price: ``input_tokens`` at ``cost`` USD per ``per_quantity`` (1,000,000)
  tokens, ``cache_read_tokens``, ``output_tokens``, ``web_searches`` per 1,000,
  ...; a tiered price adds a unit per tier (``input_tokens over 200000``), used
  when a request's input tokens exceed the tier's start.

Ids are UUIDs derived from the names (uuid5), so they are the same on every
server and at every start.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

from genai_prices import data_snapshot, types
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from aicm_tasks.server.catalog import VENDOR_ALIASES, ServiceCatalog
from aicm_tasks.server.pages import text_param

#: Namespace of the catalog's UUIDs.
_CATALOG_NAMESPACE = uuid.UUID("3b1e2f0a-9d7c-4c1b-8f5e-6a2d4c8b1e77")
#: genai-prices price field suffix -> (quantity the price is for, unit, suffix of the unit name).
PRICE_UNITS: dict[str, tuple[int, str, str]] = {
    "_mtok": (1_000_000, "token", "_tokens"),
    "_kcount": (1_000, "count", ""),
    "_kpages": (1_000, "page", "_pages"),
    "_mchars": (1_000_000, "character", "_characters"),
    "_hours": (1, "hour", "_hours"),
}


def catalog_uuid(*names: str) -> str:
    """A stable UUID for a vendor, a service or a cost unit, from its names."""
    return str(uuid.uuid5(_CATALOG_NAMESPACE, "\x00".join(names)))


def _providers() -> list[types.Provider]:
    return list(data_snapshot.get_snapshot().providers)


def find_vendor(vendor: str) -> types.Provider | None:
    """The genai-prices provider a vendor name means (``gemini`` -> Google), or None."""
    name = vendor.lower()
    name = VENDOR_ALIASES.get(name, name)
    try:
        return data_snapshot.get_snapshot().find_provider(None, name, None)
    except LookupError:
        return None


def vendors() -> list[dict[str, Any]]:
    """Every provider as the SDK's ``VendorOut``, by name."""
    return [{"uuid": catalog_uuid(p.id), "name": p.id} for p in _providers()]


def vendor_services(provider: types.Provider) -> list[dict[str, Any]]:
    """The provider's models as the SDK's ``ServiceOut`` (without ``vendor``, as the API)."""
    return [
        {
            "uuid": catalog_uuid(provider.id, model.id),
            "service_id": model.id,
            "name": model.name or model.id,
        }
        for model in provider.models
    ]


def cost_units(vendor: str, service: str, model_price: types.ModelPrice) -> list[dict[str, Any]]:
    """A model price as the SDK's ``CostUnitOut`` list, one unit per price (and tier)."""
    units = []
    for field_name, value in vars(model_price).items():
        if value is None:
            continue
        suffix = next((s for s in PRICE_UNITS if field_name.endswith(s)), None)
        if suffix is None:  # a price of a kind this table does not know yet
            continue
        per_quantity, unit, name_suffix = PRICE_UNITS[suffix]
        name = field_name[: -len(suffix)] + name_suffix
        prices: list[tuple[str, Decimal]]
        if isinstance(value, types.TieredPrices):
            prices = [(name, value.base)]
            prices += [(f"{name} over {tier.start}", tier.price) for tier in value.tiers]
        else:
            prices = [(name, value)]
        units += [
            {
                "uuid": catalog_uuid(vendor, service, unit_name),
                "name": unit_name,
                "cost": str(price),
                "unit": unit,
                "per_quantity": per_quantity,
                "currency": "USD",
                "is_active": True,
            }
            for unit_name, price in prices
        ]
    return units


async def vendors_list(request: Request) -> Response:
    """``GET /vendors/``."""
    return JSONResponse(vendors())


async def services_list(request: Request) -> Response:
    """``GET /services/?vendor=openai``: the vendor's services."""
    vendor = text_param(request.query_params.get("vendor"), "vendor")
    if vendor is None:
        raise HTTPException(400, "vendor is required (GET /services/?vendor=openai)")
    provider = find_vendor(vendor)
    if provider is None:
        raise HTTPException(404, f"no vendor {vendor[:100]!r} in the price catalog")
    return JSONResponse(vendor_services(provider))


async def service_costs_list(request: Request, catalog: ServiceCatalog) -> Response:
    """``GET /service-costs/?vendor=openai&service=gpt-4o-mini``: its prices in force now."""
    params = request.query_params
    vendor = text_param(params.get("vendor"), "vendor")
    service = text_param(params.get("service"), "service")
    if vendor is None or service is None:
        raise HTTPException(400, "vendor and service are required")
    match = catalog.resolve(f"{vendor}::{service}")
    if match is None or match.model is None:
        raise HTTPException(404, f"no service {service[:100]!r} of {vendor[:100]!r} in the catalog")
    model_price = match.model.get_prices(datetime.now(timezone.utc))
    return JSONResponse(cost_units(vendor, service, model_price))
