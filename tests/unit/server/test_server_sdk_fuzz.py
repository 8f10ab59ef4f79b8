"""Every SDK-shaped, limits and webhooks endpoint under Hypothesis: bodies built from
the models' own fields with hostile values (integers past 64 bits, NUL, unpaired
surrogates, wrong types), and query parameters, over SQLite and PostgreSQL. No
answer is a 500, and what was created is still listed afterwards (a row that
was stored but cannot be shown would make every later list a 500)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from aicm_tasks.server import create_server_app

API_KEY = "fuzz-secret.fuzz-key-id"
HEADERS = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
FUZZ = settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

_text = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["a\x00b", "\ud800", "x" * 300, "openai::gpt-4o-mini", "http://127.0.0.1:9/"]),
)
_number = st.one_of(
    st.integers(-(2**70), 2**70),
    st.sampled_from([0, 1, 2**31, 2**63, 10**30]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["1e400", "9300000000", "0.0000000001", "NaN", "-1"]),
)
_value = st.one_of(st.none(), st.booleans(), _text, _number, st.lists(_text, max_size=2))
_unit = st.fixed_dictionaries(
    {"name": _text, "cost": _number, "unit": _text},
    optional={"per_quantity": _number, "min_units": _number, "max_units": _number},
)
#: (collection path, a body strategy) for each endpoint that creates.
_BODIES = {
    "/api/v1/usage-limits/": st.fixed_dictionaries(
        {
            "threshold_type": st.sampled_from(["limit", "alert", "cap"]),
            "amount": _number,
            "period": st.sampled_from(["day", "month", "week"]),
        },
        optional={
            "service_key": _value,
            "client": _value,
            "team_uuid": _value,
            "notification_list": _value,
            "active": _value,
        },
    ),
    "/api/v1/webhooks/": st.fixed_dictionaries(
        {"url": st.one_of(_text, _text.map(lambda t: "http://127.0.0.1/" + t)), "secret": _text},
        optional={"active": _value, "tolerance": _number},
    ),
    "/api/v1/customers/": st.fixed_dictionaries(
        {"customer_key": _text}, optional={"name": _value, "phone": _value, "email": _value}
    ),
    "/api/v1/custom-services/": st.fixed_dictionaries(
        {
            "custom_service_key": _text,
            "configuration": st.fixed_dictionaries(
                {"cost_units": st.lists(_unit, max_size=2)},
                optional={"mappings": st.lists(st.dictionaries(_text, _value, max_size=2))},
            ),
        },
        optional={"is_active": _value},
    ),
}
_QUERY = st.dictionaries(
    st.sampled_from(
        ["limit", "offset", "start_date", "end_date", "customer_key", "service_key",
         "response_id", "config_id", "granularity", "vendor", "service", "active_only"]
    ),
    # No surrogate: a URL cannot carry one (the client could not even send it).
    st.one_of(
        st.text(st.characters(codec="utf-8"), max_size=12),
        st.sampled_from(["a\x00b", "x" * 300, "2026-01-01", "2026-13-45", "daily", "true"]),
        _number.map(str),
    ),
    max_size=4,
)  # fmt: skip
_LISTS = [
    "/api/v1/usage/events/",
    "/api/v1/usage/rollups/",
    "/api/v1/costs/",
    "/api/v1/customers/",
    "/api/v1/vendors/",
    "/api/v1/services/",
    "/api/v1/service-costs/",
    "/api/v1/custom-services/",
    "/api/v1/usage-limits/",
    "/api/v1/usage-limits/progress/",
    "/api/v1/triggered-limits",
    "/api/v1/webhooks/",
]


@pytest.fixture
def client(ledger_db: str) -> Iterator[TestClient]:
    app = create_server_app(api_key=API_KEY, db=ledger_db)
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


def send(client: TestClient, method: str, path: str, body: Any = None) -> Any:
    # ensure_ascii and allow_nan: the only JSON text that carries a surrogate or NaN.
    content = None if body is None else json.dumps(body, ensure_ascii=True, allow_nan=True)
    answer = client.request(method, path, content=content, headers=HEADERS)
    assert answer.status_code < 500, (method, path, body, answer.text)
    return answer


@FUZZ
@given(
    path_and_bodies=st.sampled_from(sorted(_BODIES)).flatmap(
        lambda path: st.tuples(st.just(path), _BODIES[path], _BODIES[path])
    )
)
def test_creating_changing_and_deleting_never_get_a_500(
    client: TestClient, path_and_bodies: tuple[str, Any, Any]
) -> None:
    path, body, change = path_and_bodies
    created = send(client, "POST", path, body)
    if created.status_code in (200, 201):
        item = f"{path}{created.json()['uuid']}/"
        send(client, "GET", item)
        send(client, "PUT", item, change)
    for listed in _LISTS:
        send(client, "GET", listed)
    if created.status_code in (200, 201):
        send(client, "DELETE", item)


@FUZZ
@given(path=st.sampled_from(_LISTS), query=_QUERY)
def test_every_list_never_gets_a_500_whatever_its_query(
    client: TestClient, path: str, query: dict[str, str]
) -> None:
    answer = client.get(path, params=query, headers=HEADERS)
    assert answer.status_code < 500, (path, query, answer.text)
