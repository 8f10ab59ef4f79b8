"""The official SDK's own client (``aicostmanager`` 0.3.2) reads typed from a real
``aicm-tasks serve`` on 127.0.0.1, over SQLite and PostgreSQL, after records were
tracked through the server's ``/track``: every answer validates against the SDK's
pydantic models and matches what ``/track`` answered and the ledger holds."""

from __future__ import annotations

import asyncio
import secrets
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from aicm_tasks.contract import format_timestamp
from aicm_tasks.devtools.processes import free_port, start_server, stop_process
from aicm_tasks.server.catalog import ServiceCatalog

aicostmanager = pytest.importorskip("aicostmanager")
from aicostmanager import AsyncCostManagerClient, CostManagerClient, CostQueryManager  # noqa: E402
from aicostmanager.client.exceptions import APIRequestError  # noqa: E402
from aicostmanager.models import (  # noqa: E402
    CustomerIn,
    CustomServiceIn,
    UsageEventFilters,
)

pytestmark = pytest.mark.integration

GPT = "openai::gpt-4o-mini"
CLAUDE = "anthropic::claude-3-5-haiku-20241022"
#: A key the catalog cannot price: taught with PUT /services/{key}, stored without cost.
LEARNED = "heygen::streaming-avatar"
#: Two UTC days, so the date filters and the daily rollups have something to split.
DAY_ONE = datetime(2025, 3, 10, 12, tzinfo=timezone.utc).timestamp()
DAY_TWO = datetime(2025, 3, 11, 9, tzinfo=timezone.utc).timestamp()
#: Priced records tracked: more than two pages of ten.
PRICED = 24


@dataclass
class Tracked:
    """The server, an SDK client on it, and what ``/track`` answered."""

    url: str
    api_key: str
    client: CostManagerClient
    records: list[dict[str, Any]]
    answers: dict[str, dict[str, Any]]

    def http(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.request(
            method,
            f"{self.url}/api/v1{path}",
            headers={"Authorization": f"Bearer {self.api_key}"},
            timeout=30,
            **kwargs,
        )

    def answered_usd(self, response_id: str) -> Decimal:
        return sum(
            (Decimal(e["cost"]) for e in self.answers[response_id].get("cost_events", [])),
            Decimal(0),
        )


def _records() -> list[dict[str, Any]]:
    records = []
    for i in range(PRICED):
        records.append(
            {
                "service_key": GPT if i % 2 else CLAUDE,
                "response_id": f"resp-{i:02d}-{uuid.uuid4().hex[:8]}",
                "timestamp": format_timestamp(DAY_ONE + i if i < PRICED // 2 else DAY_TWO + i),
                "customer_key": f"customer-{i % 3}",
                "payload": {"input_tokens": 1000 + i, "output_tokens": 200 + i},
                "context": {"run": i},
            }
        )
    records.append(
        {
            "service_key": LEARNED,
            "response_id": f"learned-{uuid.uuid4().hex[:8]}",
            "timestamp": format_timestamp(DAY_TWO),
            "payload": {"seconds": 30},
        }
    )
    return records


@pytest.fixture
def tracked(ledger_db: str, tmp_path: Path) -> Iterator[Tracked]:
    port = free_port()
    api_key = secrets.token_urlsafe(16)
    process = start_server(port, ledger_db, api_key, keys_dir=tmp_path / "keys")
    url = f"http://127.0.0.1:{port}"
    try:
        # The client asks GET /triggered-limits when built and keeps the answer in
        # its INI file: a private one, never the user's.
        with CostManagerClient(
            aicm_api_key=api_key,
            aicm_api_base=url,
            aicm_api_url="/api/v1",
            aicm_ini_path=str(tmp_path / "AICM.INI"),
        ) as client:
            headers = {"Authorization": f"Bearer {api_key}"}
            httpx.put(f"{url}/api/v1/services/{LEARNED}", headers=headers).raise_for_status()
            records = _records()
            response = httpx.post(
                f"{url}/api/v1/track", headers=headers, json={"tracked": records}, timeout=30
            )
            response.raise_for_status()
            answers = {r["response_id"]: r for r in response.json()["results"]}
            assert [answers[r["response_id"]]["status"] for r in records] == [
                *["completed"] * PRICED,
                "queued",
            ]
            yield Tracked(url, api_key, client, records, answers)
    finally:
        stop_process(process)


def test_usage_events_page_typed_and_iterate_across_pages(tracked: Tracked) -> None:
    client = tracked.client
    first = client.list_usage_events_typed(limit=10)
    assert first.count == len(tracked.records)
    assert len(first.results) == 10 and first.next is not None and first.previous is None
    assert [e.response_id for e in first.results] == [
        r["response_id"] for r in tracked.records[:10]
    ]

    events = list(client.iter_usage_events(limit=10))  # three pages, following next
    assert [e.response_id for e in events] == [r["response_id"] for r in tracked.records]
    by_id = {e.response_id: e for e in events}
    record = tracked.records[3]
    event = by_id[record["response_id"]]
    assert event.service_id == record["service_key"] and event.config_id == "openai"
    assert event.customer_key == record["customer_key"]
    assert event.usage == record["payload"] and event.context == record["context"]
    assert datetime.fromisoformat(event.timestamp).timestamp() == float(record["timestamp"])
    assert event.status == "completed"
    assert by_id[tracked.records[-1]["response_id"]].status == "queued"


def test_usage_events_filters(tracked: Tracked) -> None:
    client = tracked.client
    page = client.list_usage_events_typed(UsageEventFilters(customer_key="customer-1", limit=100))
    expected = [r["response_id"] for r in tracked.records if r.get("customer_key") == "customer-1"]
    assert page.count == len(expected) and [e.response_id for e in page.results] == expected

    day_one = client.list_usage_events_typed(
        UsageEventFilters(start_date=date(2025, 3, 10), end_date=date(2025, 3, 10))
    )
    assert day_one.count == PRICED // 2

    gpt = list(client.iter_usage_events(service_id=GPT, limit=5))
    assert len(gpt) == PRICED // 2 and {e.service_id for e in gpt} == {GPT}
    assert client.list_usage_events_typed(config_id="anthropic").count == PRICED // 2


def test_get_usage_event_by_event_id_or_response_id(tracked: Tracked) -> None:
    client = tracked.client
    listed = client.list_usage_events_typed(limit=3).results[2]
    assert client.get_usage_event(listed.event_id) == listed
    assert client.get_usage_event(listed.response_id) == listed
    with pytest.raises(APIRequestError) as missing:
        client.get_usage_event(str(uuid.uuid4()))
    assert missing.value.status_code == 404


def test_usage_rollups_sum_to_the_ledger(tracked: Tracked) -> None:
    client = tracked.client
    page = client.list_usage_rollups_typed(limit=4)
    keys = {
        (
            datetime.fromtimestamp(float(r["timestamp"]), tz=timezone.utc).date().isoformat(),
            r["service_key"],
            r.get("customer_key"),
        )
        for r in tracked.records
    }
    assert page.count == len(keys) and len(page.results) == 4 and page.next is not None
    rollups = list(client.iter_usage_rollups(limit=4))
    assert {(r.date, r.service_id, r.customer_key) for r in rollups} == keys
    ledger = tracked.http("GET", "/usage/events", params={"limit": 1000}).json()["events"]
    assert sum(r.cost for r in rollups) == pytest.approx(sum(e["cost"] or 0 for e in ledger))
    assert sum(r.quantity for r in rollups) == sum(
        e["input_tokens"] + e["output_tokens"] for e in ledger
    )
    day_two = client.list_usage_rollups_typed(start_date="2025-03-11", customer_key="customer-0")
    assert {r.date for r in day_two.results} == {"2025-03-11"}
    assert {r.customer_key for r in day_two.results} == {"customer-0"}
    with pytest.raises(APIRequestError) as hourly:
        client.list_usage_rollups(granularity="hourly")
    assert hourly.value.status_code == 400


def test_cost_events_page_and_iterate_match_track_answers(tracked: Tracked) -> None:
    client = tracked.client
    page = client.list_cost_events(limit=5)
    assert page.count == PRICED  # priced usage events; the learned key has no cost
    assert page.next is not None
    assert {item.cost_unit_id for item in page.results} >= {"input_tokens", "output_tokens"}

    items = list(CostQueryManager(client).iter_costs(limit=5))
    answered = sum((tracked.answered_usd(rid) for rid in tracked.answers), Decimal(0))
    assert sum((Decimal(str(item.cost)) for item in items), Decimal(0)) == answered
    claude_only = list(CostQueryManager(client).iter_costs(service_key=[CLAUDE]))
    assert {item.service_key for item in claude_only} == {CLAUDE}


def test_cost_events_by_response_id_are_those_track_answered(tracked: Tracked) -> None:
    client = tracked.client
    for record in (tracked.records[0], tracked.records[7]):
        response_id = record["response_id"]
        stored = client.list_cost_events_by_response_id(response_id)
        answered = tracked.answers[response_id]["cost_events"]
        assert [(e.cost_unit_id, e.quantity, e.cost) for e in stored] == [
            (a["cost_unit_id"], a["quantity"], a["cost"]) for a in answered
        ]
        assert {e.response_id for e in stored} == {response_id}
        assert {e.customer_key for e in stored} == {record["customer_key"]}
    assert client.list_cost_events_by_response_id(tracked.records[-1]["response_id"]) == []


def test_customers_create_get_update_list_delete(tracked: Tracked) -> None:
    client = tracked.client
    created = client.create_customer(CustomerIn(customer_key="acme", name="Acme"))
    with pytest.raises(APIRequestError) as duplicate:
        client.create_customer({"customer_key": "acme"})
    assert duplicate.value.status_code == 409
    assert client.get_customer(created.uuid) == created
    assert client.get_customer("acme") == created
    updated = client.update_customer(
        created.uuid, CustomerIn(customer_key="acme", name="Acme Ltd", email="ops@acme.test")
    )
    assert (updated.uuid, updated.name, updated.email) == (
        created.uuid,
        "Acme Ltd",
        "ops@acme.test",
    )
    for i in range(3):
        client.create_customer({"customer_key": f"c-{i}"})
    page = client.list_customers_typed(limit=2)
    assert page.count == 4 and len(page.results) == 2 and page.next is not None
    assert [c.customer_key for c in client.iter_customers(limit=3)] == ["acme", "c-0", "c-1", "c-2"]
    assert client.list_customers_typed(customer_key="c-1").count == 1
    client.delete_customer(created.uuid)
    with pytest.raises(APIRequestError) as gone:
        client.get_customer(created.uuid)
    assert gone.value.status_code == 404
    with pytest.raises(APIRequestError) as bad:
        client.create_customer({"name": "no key"})
    assert bad.value.status_code == 400


def test_vendors_services_and_service_costs_come_from_the_catalog(tracked: Tracked) -> None:
    client = tracked.client
    names = {v.name for v in client.list_vendors()}
    assert {"openai", "anthropic", "google"} <= names
    services = list(client.list_vendor_services("openai"))
    assert "gpt-4o-mini" in {s.service_id for s in services}
    assert {s.vendor for s in services} == {"openai"}

    units = {u.name: u for u in client.list_service_costs("openai", "gpt-4o-mini")}
    match = ServiceCatalog().resolve(GPT)
    assert match is not None and match.model is not None
    price = match.model.get_prices(datetime.now(timezone.utc))
    assert units["input_tokens"].cost == price.input_mtok
    assert units["output_tokens"].cost == price.output_mtok
    assert units["input_tokens"].per_quantity == 1_000_000
    with pytest.raises(APIRequestError) as unknown:
        client.list_service_costs("openai", "no-such-model")
    assert unknown.value.status_code == 404


def test_custom_services_crud_and_track_learns_their_keys(tracked: Tracked) -> None:
    client = tracked.client
    body = CustomServiceIn(
        custom_service_key="acme::transcriber",
        configuration={
            "cost_units": [{"name": "minutes", "cost": "0.006", "unit": "minute"}],
            "mappings": [{"cost_unit": "minutes", "field": "duration", "divide_by": 60}],
        },
    )
    created = client.create_custom_service(body)
    assert created.configuration == body.configuration
    assert created.cost_units[0].cost == "0.006"
    assert client.get_custom_service(created.uuid) == created
    [summary] = client.list_custom_services()
    assert (summary.uuid, summary.cost_units_count) == (created.uuid, 1)

    record = {
        "service_key": "acme::transcriber",
        "response_id": f"custom-{uuid.uuid4().hex}",
        "timestamp": format_timestamp(DAY_TWO),
        "payload": {"duration": 90},
    }
    answer = tracked.http("POST", "/track", json={"tracked": [record]}).json()["results"][0]
    assert answer["status"] == "queued"  # stored, not service_key_unknown

    inactive = body.model_copy(update={"is_active": False})
    updated = client.update_custom_service(created.uuid, inactive)
    assert updated.is_active is False and updated.uuid == created.uuid
    assert client.list_custom_services(is_active=True) == []
    client.delete_custom_service(created.uuid)
    with pytest.raises(APIRequestError) as gone:
        client.get_custom_service(created.uuid)
    assert gone.value.status_code == 404
    assert client.list_custom_services() == []
    [deleted] = client.list_custom_services(is_deleted=True)
    assert deleted.is_deleted is True


def test_our_cli_shapes_stay_beside_the_sdk_pages(tracked: Tracked) -> None:
    ours = tracked.http("GET", "/usage/events", params={"limit": 5}).json()
    assert set(ours) == {"events", "limit", "offset"} and len(ours["events"]) == 5
    report = tracked.http(
        "GET", "/costs", params={"start": "2025-03-10", "end": "2025-03-11"}
    ).json()
    assert report["total_requests"] == len(tracked.records)
    assert Decimal(str(report["total_cost"])) == sum(
        (tracked.answered_usd(rid) for rid in tracked.answers), Decimal(0)
    )


def _async_client(tracked: Tracked, tmp_path: Path) -> AsyncCostManagerClient:
    return AsyncCostManagerClient(
        aicm_api_key=tracked.api_key,
        aicm_api_base=tracked.url,
        aicm_api_url="/api/v1",
        aicm_ini_path=str(tmp_path / "ASYNC.INI"),
    )


def test_the_async_client_reads_the_same_pages(tracked: Tracked, tmp_path: Path) -> None:
    async def read() -> tuple[list[str], int, str]:
        client = _async_client(tracked, tmp_path)
        try:
            second = await client.list_usage_events_typed(limit=10, offset=10)
            costs = await client.list_cost_events(limit=100)
            event = await client.get_usage_event(second.results[0].event_id)
            return [e.response_id for e in second.results], costs.count, event.response_id
        finally:
            await client.close()

    second_page, priced, got = asyncio.run(read())
    assert second_page == [r["response_id"] for r in tracked.records[10:20]]
    assert priced == PRICED and got == second_page[0]


@pytest.mark.xfail(
    strict=True,
    reason="SDK 0.3.2 bug: AsyncCostManagerClient._iter_paginated requests `next` with "
    "params={}, and httpx 0.28 then drops the URL's query (limit, offset, filters), so "
    "page two is the first page again, unfiltered; the sync client follows `next` intact",
)
def test_the_async_clients_iteration_follows_next(tracked: Tracked, tmp_path: Path) -> None:
    async def read() -> list[str]:
        client = _async_client(tracked, tmp_path)
        try:
            return [e.response_id async for e in client.iter_usage_events(limit=10)]
        finally:
            await client.close()

    assert asyncio.run(read()) == [r["response_id"] for r in tracked.records]
