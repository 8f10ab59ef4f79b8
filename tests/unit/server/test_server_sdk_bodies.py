"""Text no store can hold (NUL, an unpaired surrogate) and out-of-range numbers, in every
JSON body and path id of the SDK-shaped endpoints: a 400 naming the field, never a 500,
and the same answer over SQLite and PostgreSQL (SQLite stored the NUL that PostgreSQL
refused with a 500)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from starlette.testclient import TestClient

from aicm_tasks.server import create_server_app

API_KEY = "unit-secret.unit-key-id"
HEADERS = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
UNIT = '{"name":"n","cost":"1","unit":"u"}'
LIMIT = '"threshold_type":"limit","amount":1,"period":"day"'

#: (path, body with one ``%s`` where the bad text goes). JSON escapes: the body
#: itself is valid UTF-8 JSON; what it decodes to is what no store can hold.
BODIES = [
    ("/api/v1/customers/", '{"customer_key":"%s"}'),
    ("/api/v1/customers/", '{"customer_key":"k","name":"%s"}'),
    ("/api/v1/customers/", '{"customer_key":"k","email":"%s"}'),
    (
        "/api/v1/custom-services/",
        '{"custom_service_key":"%s","configuration":{"cost_units":[' + UNIT + "]}}",
    ),
    ("/api/v1/usage-limits/", "{" + LIMIT + ',"service_key":"%s"}'),
    ("/api/v1/usage-limits/", "{" + LIMIT + ',"client":"%s"}'),
    ("/api/v1/usage-limits/", "{" + LIMIT + ',"notification_list":["%s"]}'),
    ("/api/v1/usage-limits/", "{" + LIMIT + ',"team_uuid":"%s"}'),
    ("/api/v1/webhooks/", '{"url":"http://127.0.0.1/%s","secret":"s"}'),
    ("/api/v1/webhooks/", '{"url":"http://127.0.0.1/","secret":"%s"}'),
]
PATHS = [
    "/api/v1/customers/%s/",
    "/api/v1/usage/event/%s/",
    "/api/v1/cost-events/%s",
    "/api/v1/usage-limits/%s/",
    "/api/v1/webhooks/%s/",
    "/api/v1/custom-services/%s/",
]
#: (as a JSON escape, as a percent-encoded path segment)
BAD_TEXT = {"nul": ("a\\u0000b", "a%00b"), "surrogate": ("a\\ud800b", "a%ED%A0%80b")}


@pytest.fixture
def client(ledger_db: str) -> Iterator[TestClient]:
    app = create_server_app(api_key=API_KEY, db=ledger_db)
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.mark.parametrize("bad", sorted(BAD_TEXT))
def test_text_no_store_can_hold_in_a_body_is_a_400_naming_the_field(
    client: TestClient, bad: str
) -> None:
    for path, body in BODIES:
        answer = client.post(path, content=(body % BAD_TEXT[bad][0]).encode(), headers=HEADERS)
        assert answer.status_code == 400, (path, body, answer.status_code, answer.text)
        assert "\x00" not in answer.text and "a\\u0000b" not in answer.text


@pytest.mark.parametrize("bad", sorted(BAD_TEXT))
def test_text_no_store_can_hold_in_a_path_id_is_refused_never_a_500(
    client: TestClient, bad: str
) -> None:
    for path in PATHS:
        for method in ("GET", "DELETE"):
            answer = client.request(method, path % BAD_TEXT[bad][1], headers=HEADERS)
            # 200: a path the server decoded to valid text (the surrogate's bytes
            # are not UTF-8), for which a list of cost events is empty.
            assert answer.status_code in (200, 400, 404, 405), (method, path, answer.text)
        assert client.get(path % BAD_TEXT["nul"][1], headers=HEADERS).status_code == 400


@pytest.mark.parametrize("tolerance", [2**31, 2**63, 10**30])
def test_a_webhook_tolerance_past_any_column_is_a_400(client: TestClient, tolerance: int) -> None:
    body = {"url": "http://127.0.0.1:9/hook", "secret": "s", "tolerance": tolerance}
    answer = client.post("/api/v1/webhooks/", json=body, headers=HEADERS)
    assert answer.status_code == 400, answer.text
    assert "tolerance" in answer.json()["detail"]
    created = client.post(
        "/api/v1/webhooks/", json={**body, "tolerance": 300}, headers=HEADERS
    ).json()
    answer = client.put(
        f"/api/v1/webhooks/{created['uuid']}/", json={"tolerance": tolerance}, headers=HEADERS
    )
    assert answer.status_code == 400, answer.text


def test_a_body_nested_past_the_json_parser_is_a_400(client: TestClient) -> None:
    """Under the 1 MiB bound, 200,000 brackets made ``json.loads`` raise RecursionError: a 500."""
    deep = b"[" * 200_000 + b"]" * 200_000
    created = client.post("/api/v1/customers/", json={"customer_key": "deep"}, headers=HEADERS)
    for method, path in [
        ("POST", "/api/v1/customers/"),
        ("POST", "/api/v1/custom-services/"),
        ("PUT", f"/api/v1/customers/{created.json()['uuid']}/"),
    ]:
        answer = client.request(method, path, content=deep, headers=HEADERS)
        assert answer.status_code == 400, (method, path, answer.text)
