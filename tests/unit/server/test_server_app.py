"""The local server over HTTP (Starlette's TestClient): auth, limits, per-record results."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import genai_prices
import pytest
from starlette.testclient import TestClient

from aicm_tasks.errors import ConfigurationError
from aicm_tasks.server import ServiceCatalog, create_server_app

API_KEY = "test-key-123"
AUTH = {"Authorization": f"Bearer {API_KEY}"}


def make_record(response_id: str, service_key: str = "openai::gpt-4o-mini", **extra: Any) -> Any:
    return {
        "service_key": service_key,
        "response_id": response_id,
        "timestamp": "1732270000.123",
        "payload": {"input_tokens": 10, "output_tokens": 20},
        **extra,
    }


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    app = create_server_app(
        api_key=API_KEY, db=str(tmp_path / "events.sqlite3"), max_body_bytes=64 * 1024
    )
    with TestClient(app) as test_client:
        yield test_client


def track(client: TestClient, records: list[Any]) -> dict[str, dict[str, Any]]:
    response = client.post("/api/v1/track", headers=AUTH, json={"tracked": records})
    assert response.status_code == 200, response.text
    return {result["response_id"]: result for result in response.json()["results"]}


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": API_KEY},
        {"Authorization": "Basic x"},
    ],
)
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/api/v1/track"),
        ("GET", "/api/v1/stats"),
        ("GET", "/api/v1/usage/events"),
        ("PUT", "/api/v1/services/unknown::service"),
    ],
)
def test_a_missing_or_wrong_key_gets_401(
    client: TestClient, headers: dict[str, str], method: str, path: str
) -> None:
    response = client.request(method, path, headers=headers, json={"tracked": []})
    assert response.status_code == 401
    assert "detail" in response.json()
    assert API_KEY not in response.text


def test_healthz_needs_no_key(client: TestClient) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"ok": True}


def test_a_body_over_the_limit_gets_413(client: TestClient) -> None:
    records = [make_record(f"r{i}", context={"pad": "x" * 1000}) for i in range(100)]
    response = client.post("/api/v1/track", headers=AUTH, json={"tracked": records})
    assert response.status_code == 413
    assert "detail" in response.json()
    assert client.get("/api/v1/stats", headers=AUTH).json()["received"] == 0


def test_a_chunked_body_over_the_limit_gets_413(client: TestClient) -> None:
    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit is counted while reading
        yield b'{"tracked": ['
        for _ in range(100):
            yield b'"' + b"x" * 1000 + b'",'
        yield b"1]}"

    response = client.post("/api/v1/track", headers=AUTH, content=chunks())
    assert response.status_code == 413


@pytest.mark.parametrize(
    "body",
    [b"not json", b"", b"[1, 2]", b'{"records": []}', b'{"tracked": {"a": 1}}', b"\xff\xfe"],
)
def test_a_body_that_is_not_a_tracked_list_gets_400(client: TestClient, body: bytes) -> None:
    response = client.post("/api/v1/track", headers=AUTH, content=body)
    assert response.status_code == 400
    assert "detail" in response.json()


def test_more_than_1000_records_gets_422(client: TestClient) -> None:
    body = json.dumps({"tracked": [{}] * 1001}).encode()
    assert len(body) < 64 * 1024
    response = client.post("/api/v1/track", headers=AUTH, content=body)
    assert response.status_code == 422
    assert "1000" in response.json()["detail"]


def test_a_mixed_batch_gets_one_result_per_record(client: TestClient) -> None:
    results = track(
        client,
        [
            make_record("ok-1"),
            make_record("ok-2", "anthropic::claude-3-5-haiku-20241022", customer_key="c1"),
            make_record("unknown-1", "unknown::service"),
            make_record("bad-1", payload={"input_tokens": "10"}),
            {"service_key": "openai::gpt-4o-mini", "payload": {}},  # no response_id at all
        ],
    )
    assert set(results) == {"ok-1", "ok-2", "unknown-1", "bad-1"}
    # gpt-4o-mini: $0.15 per million input tokens, $0.60 per million output tokens.
    version = f"genai-prices {genai_prices.__version__}"
    assert results["ok-1"] == {
        "response_id": "ok-1",
        "status": "completed",
        "cost_events": [
            {
                "provider_id": "openai",
                "service_key": "openai::gpt-4o-mini",
                "cost_unit_id": "input_tokens",
                "quantity": 10,
                "cost_per_unit": "0.00000015",
                "cost": "0.0000015",
                "price_catalog": version,
            },
            {
                "provider_id": "openai",
                "service_key": "openai::gpt-4o-mini",
                "cost_unit_id": "output_tokens",
                "quantity": 20,
                "cost_per_unit": "0.0000006",
                "cost": "0.000012",
                "price_catalog": version,
            },
        ],
    }
    assert results["ok-2"]["status"] == "completed"
    assert results["unknown-1"] == {
        "response_id": "unknown-1",
        "status": "service_key_unknown",
        "errors": [
            "Service key 'unknown::service' is not recognized: the event was not stored. "
            "Teach it to the server (PUT /api/v1/services/unknown::service, or "
            "serve --extra-service), then replay the dead letter."
        ],
    }
    assert results["bad-1"] == {
        "response_id": "bad-1",
        "status": "error",
        "errors": ["payload: input_tokens must be an integer"],
    }
    stats = client.get("/api/v1/stats", headers=AUTH).json()
    assert stats == {
        "events": 2,
        "received": 5,
        "duplicates": 0,
        "unknown_service": 1,
        "errors": 2,
    }
    stored = client.get("/api/v1/usage/events", headers=AUTH).json()["events"]
    assert [event["response_id"] for event in stored] == ["ok-1", "ok-2"]


def test_a_duplicate_is_queued_again_but_stored_once(client: TestClient) -> None:
    first = track(client, [make_record("a"), make_record("b")])["a"]
    assert first["status"] == "completed"
    again = track(client, [make_record("a"), make_record("c")])
    assert again["a"] == first
    stats = client.get("/api/v1/stats", headers=AUTH).json()
    assert (stats["events"], stats["received"], stats["duplicates"]) == (3, 4, 1)


def test_a_learned_service_key_is_queued_after_being_unknown(client: TestClient) -> None:
    first = track(client, [make_record("x-1", "heygen::streaming-avatar")])
    assert first["x-1"]["status"] == "service_key_unknown"

    response = client.put("/api/v1/services/heygen::streaming-avatar", headers=AUTH)
    assert response.status_code == 200
    assert response.json() == {"service_key": "heygen::streaming-avatar", "known": True}

    replay = track(client, [make_record("x-1", "heygen::streaming-avatar")])
    assert replay["x-1"] == {"response_id": "x-1", "status": "queued"}
    stats = client.get("/api/v1/stats", headers=AUTH).json()
    assert (stats["events"], stats["unknown_service"], stats["duplicates"]) == (1, 1, 0)


def test_learning_a_malformed_service_key_gets_400(client: TestClient) -> None:
    response = client.put("/api/v1/services/no-separator", headers=AUTH)
    assert response.status_code == 400


def test_usage_events_pages_and_filters(client: TestClient) -> None:
    track(
        client,
        [make_record(f"r{i}", customer_key=f"c{i % 2}") for i in range(5)]
        + [make_record("g", "google::gemini-2.5-flash")],
    )
    page = client.get("/api/v1/usage/events?limit=2&offset=1", headers=AUTH).json()
    assert page["limit"] == 2 and page["offset"] == 1
    assert [e["response_id"] for e in page["events"]] == ["r1", "r2"]
    by_customer = client.get("/api/v1/usage/events?customer_key=c1", headers=AUTH).json()
    assert [e["response_id"] for e in by_customer["events"]] == ["r1", "r3"]
    by_service = client.get(
        "/api/v1/usage/events", params={"service_key": "google::gemini-2.5-flash"}, headers=AUTH
    ).json()
    assert [e["response_id"] for e in by_service["events"]] == ["g"]
    event = by_service["events"][0]
    assert event["payload"] == {"input_tokens": 10, "output_tokens": 20}


@pytest.mark.parametrize("query", ["limit=x", "offset=-1", "limit=-5"])
def test_bad_paging_parameters_get_400(client: TestClient, query: str) -> None:
    response = client.get(f"/api/v1/usage/events?{query}", headers=AUTH)
    assert response.status_code == 400


def test_an_unknown_route_answers_json_404(client: TestClient) -> None:
    response = client.get("/api/v1/nothing", headers=AUTH)
    assert response.status_code == 404
    assert response.json() == {"detail": "Not Found"}


def test_extra_services_of_a_given_catalog_are_known(tmp_path: Path) -> None:
    app = create_server_app(api_key=API_KEY, catalog=ServiceCatalog(extra=["custom::thing"]))
    with TestClient(app) as client:
        assert track(client, [make_record("a", "custom::thing")])["a"]["status"] == "queued"


def test_an_empty_api_key_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError):
        create_server_app(api_key="")


def test_the_api_key_and_bodies_are_never_logged(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    track(client, [make_record("secret-response", payload={"input_tokens": 987654321})])
    client.post("/api/v1/track", headers={"Authorization": "Bearer wrong-key-xyz"}, json={})
    assert API_KEY not in caplog.text
    assert "wrong-key-xyz" not in caplog.text
    assert "987654321" not in caplog.text
