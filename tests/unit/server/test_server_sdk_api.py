"""The SDK-shaped routes (sdk_api.py) off the wire: auth, 400s for bad input, paging
links, the cost-event fallback and the catalog's cost units. The real SDK client
against a real server is tests/integration/test_sdk_client.py."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from genai_prices import types
from starlette.testclient import TestClient

from aicm_tasks.server import create_server_app
from aicm_tasks.server.catalog import ServiceCatalog
from aicm_tasks.server.cost_events import cost_items
from aicm_tasks.server.pricing import PriceBook
from aicm_tasks.server.usage_api import event_id, seq_of
from aicm_tasks.server.vendors import cost_units
from aicm_tasks.usage import TokenCounts

API_KEY = "sdk-test-key"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
SDK_GETS = [
    "/api/v1/usage/events/",
    "/api/v1/usage/event/x/",
    "/api/v1/usage/rollups/",
    "/api/v1/costs/",
    "/api/v1/cost-events/x",
    "/api/v1/customers/",
    "/api/v1/customers/x/",
    "/api/v1/vendors/",
    "/api/v1/services/?vendor=openai",
    "/api/v1/service-costs/?vendor=openai&service=gpt-4o-mini",
    "/api/v1/custom-services/",
    "/api/v1/custom-services/x/",
]


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    app = create_server_app(api_key=API_KEY, db=str(tmp_path / "events.sqlite3"))
    with TestClient(app) as test_client:
        yield test_client


def track(client: TestClient, count: int) -> list[str]:
    records: list[dict[str, Any]] = [
        {
            "service_key": "openai::gpt-4o-mini",
            "response_id": f"r-{i}",
            "timestamp": "1732270000.5",
            "payload": {"input_tokens": 10 + i, "output_tokens": 5},
        }
        for i in range(count)
    ]
    response = client.post("/api/v1/track", headers=AUTH, json={"tracked": records})
    assert response.status_code == 200
    return [r["response_id"] for r in records]


@pytest.mark.parametrize("path", SDK_GETS)
def test_every_sdk_route_needs_the_key(client: TestClient, path: str) -> None:
    assert client.get(path).status_code == 401
    assert client.get(path, headers={"Authorization": "Bearer nope"}).status_code == 401


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/api/v1/usage/events/", {"offset": str(10**20)}),
        ("/api/v1/usage/events/", {"limit": "0"}),
        ("/api/v1/usage/events/", {"limit": "ten"}),
        ("/api/v1/usage/events/", {"start_date": "2025-13-01"}),
        ("/api/v1/usage/events/", {"customer_key": "a\x00b"}),
        ("/api/v1/usage/events/", {"service_id": "x" * 300}),
        ("/api/v1/usage/rollups/", {"granularity": "hourly"}),
        ("/api/v1/usage/rollups/", {"end_date": "yesterday"}),
        ("/api/v1/costs/", {"offset": "-1"}),
        ("/api/v1/customers/", {"customer_key": "\x00"}),
        ("/api/v1/services/", {}),
        ("/api/v1/service-costs/", {"vendor": "openai"}),
        ("/api/v1/custom-services/", {"is_active": "maybe"}),
    ],
)
def test_a_bad_parameter_is_a_400_with_a_detail(
    client: TestClient, path: str, params: dict[str, str]
) -> None:
    response = client.get(path, params=params, headers=AUTH)
    assert response.status_code == 400, response.text
    assert response.json()["detail"]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/v1/customers/", b"not json"),
        ("/api/v1/customers/", b"[]"),
        ("/api/v1/customers/", b'{"customer_key": ""}'),
        ("/api/v1/custom-services/", b'{"custom_service_key": "a::b"}'),
        (
            "/api/v1/custom-services/",
            b'{"custom_service_key": "a::b", "configuration": {"cost_units": [{"name": "x"}]}}',
        ),
    ],
)
def test_a_bad_body_is_a_400_naming_fields_not_values(
    client: TestClient, path: str, body: bytes
) -> None:
    response = client.post(path, content=body, headers=AUTH)
    assert response.status_code == 400, response.text
    assert "not json" not in response.json()["detail"]


def test_pages_link_to_their_neighbours_until_the_last(client: TestClient) -> None:
    ids = track(client, 5)
    first = client.get("/api/v1/usage/events/", params={"limit": 2}, headers=AUTH).json()
    assert first["count"] == 5 and first["previous"] is None
    assert [e["response_id"] for e in first["results"]] == ids[:2]
    seen = list(first["results"])
    page = first
    while page["next"] is not None:
        query = parse_qs(urlsplit(page["next"]).query)
        assert query["limit"] == ["2"]
        page = client.get(page["next"], headers=AUTH).json()
        assert page["previous"] is not None
        seen += page["results"]
    assert [e["response_id"] for e in seen] == ids
    past_the_end = client.get("/api/v1/usage/events/", params={"offset": 10}, headers=AUTH).json()
    assert past_the_end["results"] == [] and past_the_end["next"] is None


def test_our_usage_events_keep_their_shape_beside_the_sdk_page(client: TestClient) -> None:
    track(client, 2)
    ours = client.get("/api/v1/usage/events", headers=AUTH).json()
    sdk = client.get("/api/v1/usage/events/", headers=AUTH).json()
    assert set(ours) == {"events", "limit", "offset"}
    assert set(sdk) == {"count", "next", "previous", "results"}


def test_the_learn_route_still_answers_put_beside_the_services_list(client: TestClient) -> None:
    assert client.put("/api/v1/services/acme::thing", headers=AUTH).json()["known"] is True
    assert (
        client.get("/api/v1/services/", params={"vendor": "nope"}, headers=AUTH).status_code == 404
    )


def test_event_ids_are_row_numbers_and_response_ids_are_not_taken_for_them() -> None:
    assert event_id(7) == "00000000-0000-0000-0000-000000000007"
    assert seq_of(event_id(7)) == 7
    assert seq_of("resp-1") is None
    # Response ids that parse as UUIDs are not taken for row numbers.
    assert seq_of("3f2b8a9e-1c4d-4e5f-8a6b-7c8d9e0f1a2b") is None
    assert seq_of("00000000000000000000000000000007") is None
    assert seq_of(event_id(0)) is None


def _row(service_key: str, nano_usd: int | None, **tokens: int) -> tuple[Any, ...]:
    counts = [tokens.get(k, 0) for k in ("i", "o", "c", "w", "r")]
    return (1, "r-1", service_key, None, 1732270000.0, None, *counts, nano_usd, "0.0.0")


def test_cost_events_are_the_track_answer_when_the_price_still_holds() -> None:
    catalog, prices = ServiceCatalog(), PriceBook()
    match = catalog.resolve("openai::gpt-4o-mini")
    assert match is not None
    cost = prices.cost(match, TokenCounts(100, 50), 1732270000.0)
    assert cost is not None
    items = cost_items(_row("openai::gpt-4o-mini", cost.nano_usd, i=100, o=50), catalog, prices)
    assert items == cost.cost_events("openai::gpt-4o-mini", TokenCounts(100, 50))


def test_a_stored_cost_the_catalog_no_longer_gives_reads_as_one_total() -> None:
    items = cost_items(
        _row("openai::gpt-4o-mini", 123_456_789, i=100, o=50), ServiceCatalog(), PriceBook()
    )
    assert [(i["cost_unit_id"], i["cost"]) for i in items] == [("total", "0.123456789")]
    assert cost_items(_row("acme::x", None), ServiceCatalog(), PriceBook()) == []


def test_cost_units_name_each_price_and_tier() -> None:
    price = types.ModelPrice(
        input_mtok=types.TieredPrices(
            base=Decimal("1.25"), tiers=[types.Tier(start=200_000, price=Decimal("2.5"))]
        ),
        output_mtok=Decimal("10"),
        requests_kcount=Decimal("5"),
    )
    units = {u["name"]: u for u in cost_units("google", "gemini-x", price)}
    assert units["input_tokens"]["cost"] == "1.25"
    assert units["input_tokens over 200000"]["cost"] == "2.5"
    assert (units["output_tokens"]["per_quantity"], units["output_tokens"]["unit"]) == (
        1_000_000,
        "token",
    )
    assert (units["requests"]["per_quantity"], units["requests"]["unit"]) == (1000, "count")
    assert len({u["uuid"] for u in units.values()}) == len(units)
