"""The routes the official SDK's ``CostManagerClient`` reads (``aicostmanager`` 0.3.2).

``app.py`` adds them beside its own; each guarded by the same Bearer key. The
SDK's paths end in ``/`` where ours do not (``/usage/events/`` and ``/costs/``
are the SDK's pages; ``/usage/events`` and ``/costs`` stay our CLI's shapes),
so the two sets never collide. ``docs/local-server.md`` lists every client
method and its endpoint.

Routes (under ``/api/v1``)::

    GET  /usage/events/                 UsageEvent pages        usage_api.py
    GET  /usage/event/{event_id}/       one UsageEvent          usage_api.py
    GET  /usage/rollups/                UsageRollup pages       usage_api.py
    GET  /costs/                        CostEventsResponse      cost_events.py
    GET  /cost-events/{response_id}     ApiCostEventOut list    cost_events.py
    GET  POST /customers/               customers               customers.py
    GET  PUT DELETE /customers/{id}/    one customer            customers.py
    GET  /vendors/                      the price catalog       vendors.py
    GET  /services/?vendor=             a vendor's services     vendors.py
    GET  /service-costs/?vendor=&service=  a service's prices   vendors.py
    GET  POST /custom-services/         custom services         custom_services.py
    GET  PUT DELETE /custom-services/{uuid}/                    custom_services.py
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from aicm_tasks.server import cost_events, custom_services, customers, usage_api, vendors
from aicm_tasks.server.catalog import ServiceCatalog
from aicm_tasks.server.ledger import EventStore
from aicm_tasks.server.pricing import PriceBook

Handler = Callable[[Request], Awaitable[Response]]


def create_sdk_tables(store: EventStore) -> None:
    """Create the tables beside the ledger (customers, custom services) if missing."""
    store.execute(customers.CUSTOMERS_DDL)
    store.execute(custom_services.CUSTOM_SERVICES_DDL)


def sdk_routes(
    prefix: str,
    *,
    store: EventStore,
    catalog: ServiceCatalog,
    prices: PriceBook,
    authorized: Callable[[Handler], Handler],
) -> list[Route]:
    """The SDK client's routes under ``prefix`` (``/api/v1``), each through ``authorized``.

    Creates the tables they keep and teaches ``catalog`` the active custom
    services' keys.
    """
    create_sdk_tables(store)
    custom_services.learn_active(store, catalog)

    def route(path: str, endpoint: Handler, *methods: str) -> Route:
        return Route(f"{prefix}{path}", authorized(endpoint), methods=list(methods))

    partial = functools.partial
    return [
        route("/usage/events/", partial(usage_api.usage_events_page, store=store), "GET"),
        route(
            "/usage/event/{event_id:path}/",
            partial(usage_api.usage_event_detail, store=store),
            "GET",
        ),
        route("/usage/rollups/", partial(usage_api.usage_rollups_page, store=store), "GET"),
        route(
            "/costs/",
            partial(cost_events.cost_events_page, store=store, catalog=catalog, prices=prices),
            "GET",
        ),
        route(
            "/cost-events/{response_id:path}",
            partial(
                cost_events.cost_events_of_response, store=store, catalog=catalog, prices=prices
            ),
            "GET",
        ),
        route("/customers/", partial(customers.customers_collection, store=store), "GET", "POST"),
        route(
            "/customers/{customer_id:path}/",
            partial(customers.customer_item, store=store),
            "GET",
            "PUT",
            "DELETE",
        ),
        route("/vendors/", vendors.vendors_list, "GET"),
        route("/services/", vendors.services_list, "GET"),
        route("/service-costs/", partial(vendors.service_costs_list, catalog=catalog), "GET"),
        route(
            "/custom-services/",
            partial(custom_services.custom_services_collection, store=store, catalog=catalog),
            "GET",
            "POST",
        ),
        route(
            "/custom-services/{service_uuid}/",
            partial(custom_services.custom_service_item, store=store, catalog=catalog),
            "GET",
            "PUT",
            "DELETE",
        ),
    ]
