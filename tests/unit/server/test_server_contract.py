"""The server and the call site agree on the contract, on SQLite and PostgreSQL, and the
server answers 400 (never 500) to every bad parameter or body. In process, through
Starlette's TestClient; ``tests/integration/test_server_contract_http.py`` does the
same over a real ``aicm-tasks serve``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from aicm_tasks.contract import MAX_NESTING_DEPTH, STATUS_ERROR
from aicm_tasks.errors import RecordError
from aicm_tasks.producer.record import build_record
from aicm_tasks.server import create_server_app
from tests.support.contract import (
    call_site_inputs,
    fields_of,
    nest,
    records_built_from,
    same_record,
    wire_records,
)

API_KEY = "contract-key"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
#: What a record build_record accepted may be answered: never ``error``.
ACCEPTED = {"queued", "completed", "service_key_unknown"}


def _fixture_settings(max_examples: int) -> settings:
    """Hypothesis settings for tests that share one server (a fixture) across examples."""
    return settings(
        max_examples=max_examples,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )


@pytest.fixture
def client(ledger_db: str) -> Iterator[TestClient]:
    """The server over SQLite or PostgreSQL; a 500 comes back as a response, not an exception."""
    app = create_server_app(api_key=API_KEY, db=ledger_db)
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


def post_track(client: TestClient, records: list[Any]) -> dict[Any, dict[str, Any]]:
    response = client.post(
        "/api/v1/track",
        headers={**AUTH, "Content-Type": "application/json"},
        # ensure_ascii: the only way JSON text can carry an unpaired surrogate.
        content=json.dumps({"tracked": records}, ensure_ascii=True),
    )
    assert response.status_code == 200, response.text
    return {result["response_id"]: result for result in response.json()["results"]}


@_fixture_settings(250)
@given(inputs=st.lists(call_site_inputs(), min_size=1, max_size=5))
def test_every_record_build_record_accepts_the_server_accepts(
    client: TestClient, inputs: list[dict[str, Any]]
) -> None:
    built = records_built_from(inputs)
    if not built:
        return
    records = {record.response_id: json.loads(record.body) for record in built}
    results = post_track(client, list(records.values()))
    assert set(results) == set(records)
    for response_id, result in results.items():
        assert result["status"] in ACCEPTED, (records[response_id], result)


@_fixture_settings(250)
@given(
    records=st.lists(
        wire_records(), min_size=1, max_size=5, unique_by=lambda record: record["response_id"]
    )
)
def test_the_server_refuses_exactly_what_build_record_refuses(
    client: TestClient, records: list[dict[str, Any]]
) -> None:
    results = post_track(client, records)
    # The records as the server reads them: JSON joins an escaped surrogate pair
    # ("\\ud800\\udfff") into one character, which Python strings keep apart.
    for record in json.loads(json.dumps(records, ensure_ascii=True)):
        result = results.get(record["response_id"])
        # No result only for an id that is not a string: nothing to match it to.
        refused = result is None or result["status"] == STATUS_ERROR
        if result is None:
            assert not isinstance(record["response_id"], str)
        try:
            built = build_record(**fields_of(record))
        except RecordError as exc:
            assert refused, f"build_record refused ({exc}) what the server took: {result}"
            continue
        assert not refused, f"build_record accepted what the server refused: {result}"
        assert same_record(json.loads(built.body), record)


def test_a_body_nested_past_the_parser_is_a_400_and_a_deep_record_an_error(
    client: TestClient,
) -> None:
    deep = "[" * 100_000 + "]" * 100_000
    response = client.post("/api/v1/track", headers=AUTH, content='{"tracked": ' + deep + "}")
    assert response.status_code == 400
    assert "nests too deeply" in response.json()["detail"]

    record = {
        "service_key": "openai::gpt-4o-mini",
        "response_id": "deep",
        "timestamp": "1732270000",
        "payload": {"input_tokens": 1, "x": nest(500)},
    }
    result = post_track(client, [record])["deep"]
    assert result["status"] == STATUS_ERROR
    assert len(result["errors"]) == 1
    assert result["errors"][0].startswith("payload: ['x']['k'][0]['k']")
    assert f"nests deeper than {MAX_NESTING_DEPTH} levels" in result["errors"][0]


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/api/v1/usage/events", {"offset": str(10**20)}),
        ("/api/v1/usage/events", {"limit": "9" * 5000}),
        ("/api/v1/usage/events", {"offset": "-1"}),
        ("/api/v1/usage/events", {"start": "2024-02-30"}),
        ("/api/v1/usage/events", {"customer_key": "a\x00b"}),
        ("/api/v1/usage/events", {"service_key": "s" * 256}),
        ("/api/v1/costs", {"group_by": "year"}),
        ("/api/v1/costs", {"start": "2024-02-01", "end": "2024-01-01"}),
        ("/api/v1/costs", {"customer_key": "\x00"}),
        ("/api/v1/budget-status", {"as_of": "tomorrow"}),
        ("/api/v1/budget-status", {"customer_key": "\x00"}),
    ],
)
def test_bad_query_parameters_are_a_400_with_a_json_detail(
    client: TestClient, path: str, params: dict[str, str]
) -> None:
    response = client.get(path, headers=AUTH, params=params)
    assert response.status_code == 400, response.text
    assert response.json()["detail"]


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/api/v1/usage/events", {"end": "9999-12-31"}),
        ("/api/v1/usage/events", {"start": "0001-01-01", "offset": str(2**63 - 1)}),
        ("/api/v1/costs", {"start": "9999-12-31"}),
        ("/api/v1/costs", {"start": "0001-01-01", "end": "9999-12-31", "group_by": "week"}),
        ("/api/v1/budget-status", {"as_of": "9999-12-31"}),
        ("/api/v1/budget-status", {"as_of": "0001-01-01"}),
    ],
)
def test_extreme_but_valid_dates_and_offsets_are_answered(
    client: TestClient, path: str, params: dict[str, str]
) -> None:
    response = client.get(path, headers=AUTH, params=params)
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("service_key", ["openai::", "::", "a%00::b", "a::" + "b" * 253, "gpt-4o"])
def test_teaching_a_malformed_service_key_is_a_400(client: TestClient, service_key: str) -> None:
    response = client.put(f"/api/v1/services/{service_key}", headers=AUTH)
    assert response.status_code == 400, response.text
    assert "service_key" in response.json()["detail"]


_param_values = st.one_of(
    st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=12),
    st.integers().map(str),
    st.sampled_from(["9" * 5000, str(2**63), str(2**63 - 1), "-0", "1e3", " 5", "0x10"]),
    st.dates().map(lambda day: day.isoformat()),
    st.sampled_from(["9999-12-31", "0001-01-01", "2024-02-29", "2023-02-29", "20240101"]),
    st.sampled_from(["day", "week", "month", "provider", "model", "service", "customer"]),
)
_params = st.dictionaries(
    st.sampled_from(
        ["limit", "offset", "start", "end", "as_of", "group_by", "service_key", "customer_key"]
    ),
    _param_values,
    max_size=4,
)


@_fixture_settings(150)
@given(
    path=st.sampled_from(
        ["/api/v1/stats", "/api/v1/usage/events", "/api/v1/costs", "/api/v1/budget-status"]
    ),
    params=_params,
)
def test_query_parameters_never_get_a_500(
    client: TestClient, path: str, params: dict[str, str]
) -> None:
    response = client.get(path, headers=AUTH, params=params)
    assert response.status_code in (200, 400), (params, response.status_code, response.text)
    assert isinstance(response.json(), dict)


@_fixture_settings(60)
@given(service_key=st.text(max_size=300))
def test_teaching_any_service_key_never_gets_a_500(client: TestClient, service_key: str) -> None:
    response = client.put(f"/api/v1/services/{quote(service_key, safe='')}", headers=AUTH)
    assert response.status_code in (200, 400, 404), response.text


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=10,
)
_bodies = st.one_of(
    st.binary(max_size=64),
    _json.map(lambda doc: json.dumps(doc).encode()),
    _json.map(lambda doc: json.dumps({"tracked": doc}).encode()),
    st.lists(_json, max_size=3).map(lambda docs: json.dumps({"tracked": docs}).encode()),
    st.integers(1, 200_000).map(lambda n: b'{"tracked": [' + b"[" * n + b"]" * n + b"]}"),
    st.integers(1, 200_000).map(lambda n: b"{" * n),
    st.sampled_from([b'{"tracked": [' + b"9" * 5000 + b"]}", b"\xff\xfe", b"", b"null"]),
)


@_fixture_settings(150)
@given(body=_bodies)
def test_track_bodies_never_get_a_500(client: TestClient, body: bytes) -> None:
    response = client.post(
        "/api/v1/track", headers={**AUTH, "Content-Type": "application/json"}, content=body
    )
    assert response.status_code in (200, 400, 413, 422), (body[:80], response.text)
    assert isinstance(response.json(), dict)
