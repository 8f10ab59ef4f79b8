"""Usage limits over the server's HTTP API (Starlette's TestClient), over SQLite and
PostgreSQL: periods, scopes, thresholds, what un-trips a limit, bad input."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
from hypothesis import given
from hypothesis import strategies as st
from starlette.testclient import TestClient

from aicm_tasks.server import create_server_app
from aicm_tasks.server.limits import LimitBook, period_bounds
from aicm_tasks.server.signing import ISSUER

API_KEY = "unit-secret.unit-key-id"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
SERVICE = "openai::gpt-4o-mini"
#: Cost of one record of :func:`record`: 1000 input and 100 output tokens of gpt-4o-mini.
RECORD_USD = 0.00021
_serial = iter(range(10**9))


@pytest.fixture
def client(ledger_db: str) -> Iterator[TestClient]:
    with TestClient(create_server_app(api_key=API_KEY, db=ledger_db)) as test_client:
        yield test_client


def record(
    *, customer_key: str | None = None, service_key: str = SERVICE, timestamp_s: float | None = None
) -> dict[str, Any]:
    return {
        "service_key": service_key,
        "response_id": f"limit-test-{next(_serial)}",
        "timestamp": str(
            datetime.now(timezone.utc).timestamp() if timestamp_s is None else timestamp_s
        ),
        "payload": {"input_tokens": 1000, "output_tokens": 100},
        "customer_key": customer_key,
    }


def create(http: TestClient, **fields: Any) -> dict[str, Any]:
    body = {"threshold_type": "limit", "amount": 0.0005, "period": "month", **fields}
    response = http.post("/api/v1/usage-limits/", headers=AUTH, json=body)
    assert response.status_code == 201, response.text
    document: dict[str, Any] = response.json()
    return document


def triggered_ids(document: dict[str, Any]) -> list[str]:
    """Limit ids of a signed ``triggered_limits`` object, decoded as the SDK does."""
    claims = jwt.decode(
        document["encrypted_payload"], document["public_key"], algorithms=["RS256"], issuer=ISSUER
    )
    return [event["limit_id"] for event in claims["triggered_limits"]]


def track(client: TestClient, records: list[dict[str, Any]]) -> list[str]:
    response = client.post("/api/v1/track", headers=AUTH, json={"tracked": records})
    assert response.status_code == 200, response.text
    return triggered_ids(response.json()["triggered_limits"])


def test_every_track_answer_carries_the_signed_set_even_when_empty(client: TestClient) -> None:
    assert track(client, [record()]) == []


def test_scopes_count_only_their_own_spend(client: TestClient) -> None:
    service = create(client, service_key=SERVICE)
    customer = create(client, client="acme")
    both = create(client, service_key="anthropic::claude-3-5-haiku-20241022", client="acme")
    account = create(client, amount=0.0008)
    # Two gpt-4o-mini records of globex: 0.00042 USD, under every limit.
    assert track(client, [record(customer_key="globex") for _ in range(2)]) == []
    # A third makes the service's spend 0.00063 (>= 0.0005); the account's is under 0.0008.
    assert track(client, [record(customer_key="globex")]) == [service["uuid"]]
    # acme's first record: acme 0.00021 (< 0.0005); the account reaches 0.00084 (>= 0.0008).
    tripped = track(client, [record(customer_key="acme")])
    assert sorted(tripped) == sorted([service["uuid"], account["uuid"]])
    # acme's spend on a service of its own limit is not on claude: `both` stays.
    assert track(client, [record(customer_key="acme") for _ in range(2)]) == [
        service["uuid"],
        account["uuid"],
        customer["uuid"],
    ]
    assert both["uuid"] not in track(client, [record(customer_key="acme")])


def test_spend_reaching_the_amount_exactly_trips_and_progress_shows_it(client: TestClient) -> None:
    limit = create(client, amount=2 * RECORD_USD, period="day")
    assert track(client, [record()]) == []
    assert track(client, [record()]) == [limit["uuid"]]
    (progress,) = client.get("/api/v1/usage-limits/progress/", headers=AUTH).json()
    assert progress["uuid"] == limit["uuid"]
    assert progress["current_spend"] == pytest.approx(2 * RECORD_USD)
    assert progress["remaining_amount"] == 0


def test_spend_of_earlier_periods_does_not_count(client: TestClient) -> None:
    now = datetime.now(timezone.utc)
    day_limit = create(client, amount=RECORD_USD, period="day")
    month_limit = create(client, amount=RECORD_USD, period="month")
    first_of_month, _, _ = period_bounds("month", now)
    last_year = datetime(now.year - 1, now.month, 1, 12, tzinfo=timezone.utc).timestamp()
    assert track(client, [record(timestamp_s=last_year)]) == []
    if now.date() != first_of_month:
        # Earlier this month: the month's limit trips, the day's does not.
        earlier = datetime(now.year, now.month, 1, 12, tzinfo=timezone.utc).timestamp()
        assert track(client, [record(timestamp_s=earlier)]) == [month_limit["uuid"]]
    assert day_limit["uuid"] in track(client, [record()])


def test_alerts_trip_but_are_not_in_the_enforced_set(client: TestClient) -> None:
    create(client, threshold_type="alert", amount=0)
    limit = create(client, amount=0)
    assert track(client, [record()]) == [limit["uuid"]]
    progress = client.get("/api/v1/usage-limits/progress/", headers=AUTH).json()
    assert [p["threshold_type"] for p in progress] == ["alert", "limit"]


def test_a_limit_already_spent_trips_when_created_and_un_trips_when_changed(
    client: TestClient,
) -> None:
    track(client, [record()])
    limit = create(client, amount=RECORD_USD / 2)
    listed = client.get("/api/v1/triggered-limits", headers=AUTH).json()
    assert triggered_ids(listed["triggered_limits"]) == [limit["uuid"]]
    body: dict[str, Any] = {"threshold_type": "limit", "amount": "1.5", "period": "month"}
    response = client.put(f"/api/v1/usage-limits/{limit['uuid']}/", headers=AUTH, json=body)
    assert response.status_code == 200 and response.json()["amount"] == 1.5
    assert track(client, [record()]) == []
    body = {**body, "amount": 0, "active": False}
    response = client.put(f"/api/v1/usage-limits/{limit['uuid']}/", headers=AUTH, json=body)
    assert response.json()["active"] is False
    assert track(client, [record()]) == []  # inactive: never trips
    assert client.delete(f"/api/v1/usage-limits/{limit['uuid']}/", headers=AUTH).status_code == 204
    assert client.delete(f"/api/v1/usage-limits/{limit['uuid']}/", headers=AUTH).status_code == 404


@pytest.mark.parametrize(
    "body",
    [
        {"threshold_type": "cap", "amount": 1, "period": "month"},
        {"threshold_type": "limit", "amount": -1, "period": "month"},
        {"threshold_type": "limit", "amount": "NaN", "period": "month"},
        {"threshold_type": "limit", "amount": 1, "period": "week"},
        {"threshold_type": "limit", "amount": 1, "period": "day", "colour": "red"},
        {"threshold_type": "limit", "period": "day"},
        [],
        # Past what the ledger's integer nano-USD column holds (about 9.2e9 USD):
        # these were a 500 (an overflow in the store), not a 400.
        {"threshold_type": "limit", "amount": "9300000000", "period": "day"},
        {"threshold_type": "limit", "amount": "1e15", "period": "day"},
        {"threshold_type": "limit", "amount": "123456789012.123456789012", "period": "day"},
    ],
)
def test_a_bad_limit_is_a_400_naming_the_problem(client: TestClient, body: Any) -> None:
    response = client.post("/api/v1/usage-limits/", headers=AUTH, json=body)
    assert response.status_code == 400
    assert response.json()["detail"]


def test_unknown_ids_are_404_and_every_route_needs_the_key(client: TestClient) -> None:
    assert client.get("/api/v1/usage-limits/nope/", headers=AUTH).status_code == 404
    assert client.get("/api/v1/webhooks/nope/", headers=AUTH).status_code == 404
    for path in ("/api/v1/usage-limits/", "/api/v1/triggered-limits", "/api/v1/webhooks/"):
        assert client.get(path).status_code == 401


def test_two_servers_sharing_postgresql_record_one_trip(postgres_url: str) -> None:
    notified: list[dict[str, Any]] = []
    with (
        TestClient(create_server_app(api_key=API_KEY, db=postgres_url)) as first,
        TestClient(create_server_app(api_key=API_KEY, db=postgres_url)) as second,
    ):
        limit = create(first, amount=0)
        books: list[LimitBook] = [first.app.state.limits, second.app.state.limits]
        track(first, [record()])  # first judges and records the trip
        for book in books:
            book._notify = notified.append
            assert book.judge() == 0  # already recorded: nobody notifies again
        assert track(second, [record()]) == [limit["uuid"]]
    assert notified == []


@given(st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2099, 12, 31)))
def test_a_period_holds_its_day_and_ends_at_the_next_periods_midnight(moment: datetime) -> None:
    now = moment.replace(tzinfo=timezone.utc)
    for period in ("day", "month"):
        first, last, end = period_bounds(period, now)
        assert first <= now.date() <= last
        assert end == datetime(*(last + timedelta(days=1)).timetuple()[:3], tzinfo=timezone.utc)
        assert now < end
        if period == "day":
            assert first == last == now.date()
        else:
            assert first.day == 1 and (last + timedelta(days=1)).day == 1
            assert (first.year, first.month) == (last.year, last.month)


def test_a_hanging_webhook_never_holds_up_a_track_answer(
    client: TestClient, tmp_path: Path
) -> None:
    release = threading.Event()
    got = threading.Event()
    answered = threading.Event()

    class Hanging(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            got.set()
            release.wait(120)
            answered.set()
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hanging)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/"
        response = client.post("/api/v1/webhooks/", headers=AUTH, json={"url": url, "secret": "s"})
        assert response.status_code == 201
        limit = create(client, amount=0)
        assert track(client, [record()]) == [limit["uuid"]]
        assert got.wait(30), "the webhook was not called"
        # /track answered while the receiver still holds its answer: had it
        # waited for the webhook, it could only have answered after it.
        assert not answered.is_set()
    finally:
        release.set()
        server.shutdown()
        server.server_close()


def test_a_track_answer_survives_limits_that_cannot_be_read(
    client: TestClient, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    create(client, amount=0)

    def unreadable(**_: Any) -> Any:
        raise OSError("the database went away")

    monkeypatch.setattr(client.app.state.limits._limits, "limits", unreadable)  # type: ignore[attr-defined]
    response = client.post("/api/v1/track", headers=AUTH, json={"tracked": [record()]})
    assert response.status_code == 200
    assert [r["status"] for r in response.json()["results"]] == ["completed"]
    assert "triggered_limits" not in response.json()
    assert "usage limits not judged" in caplog.text


@pytest.mark.parametrize("amount", ["0.0000000001", "0.0000000009"])
def test_an_amount_under_a_nano_usd_is_not_read_as_zero(client: TestClient, amount: str) -> None:
    """Amounts are kept in whole nano-USD: a positive amount under one was
    truncated to 0, a limit that tripped at once, with nothing spent, and
    stopped every producer it matched."""
    created = client.post(
        "/api/v1/usage-limits/",
        headers=AUTH,
        json={"threshold_type": "limit", "amount": amount, "period": "day"},
    )
    assert created.status_code == 201, created.text
    assert created.json()["amount"] > 0
    triggered = client.get("/api/v1/triggered-limits", headers=AUTH).json()
    token = triggered.get("triggered_limits", triggered)["encrypted_payload"]
    assert jwt.decode(token, options={"verify_signature": False})["triggered_limits"] == []
