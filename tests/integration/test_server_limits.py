"""Usage limits, triggered limits and webhooks: the official SDK (``aicostmanager``
0.3.2) against a real ``aicm-tasks serve`` process on 127.0.0.1, over SQLite and
PostgreSQL. The SDK's client makes every typed call; the SDK's own
``ConfigManager`` and ``Tracker`` decode the signed ``triggered_limits``."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import stat
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from aicostmanager import AsyncCostManagerClient, CostManagerClient, Tracker
from aicostmanager.client.exceptions import APIRequestError, UsageLimitExceeded
from aicostmanager.config_manager import ConfigManager
from aicostmanager.models import (
    Period,
    ThresholdType,
    UsageLimitIn,
    UsageLimitOut,
    UsageLimitProgressOut,
    WebhookEndpointCreate,
    WebhookEndpointOut,
    WebhookEndpointUpdate,
)
from aicostmanager.triggered_limits_cache import triggered_limits_cache

from aicm_tasks.devtools.processes import free_port, stop_process, wait_until
from aicm_tasks.server.signing import PRIVATE_KEY_FILE
from aicm_tasks.server.webhooks import SIGNATURE_HEADER

pytestmark = pytest.mark.integration

#: A key of the SDK's shape: its id (after the last dot) is what trip events name.
API_KEY = "sk-local-secret-part.key-id-7"
SERVICE = "openai::gpt-4o-mini"
#: Cost of one record of :func:`record` at gpt-4o-mini's price: 0.00021 USD.
RECORD_USD = 0.00021


@dataclass
class Receiver:
    """A webhook receiver on 127.0.0.1: answers 500 to the first ``failures`` POSTs."""

    failures: int
    bodies: list[bytes] = field(default_factory=list)
    signatures: list[str] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    url: str = ""


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver(failures=1)
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            with lock:
                state.bodies.append(body)
                state.signatures.append(self.headers.get(SIGNATURE_HEADER, ""))
                status = 500 if len(state.bodies) <= state.failures else 200
                state.statuses.append(status)
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/aicm"
    yield state
    server.shutdown()
    server.server_close()


@dataclass
class Served:
    url: str
    keys_dir: Path
    process: subprocess.Popen[bytes]


@pytest.fixture(params=["sqlite", "postgresql"])
def served(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Served]:
    """``aicm-tasks serve`` in a subprocess, its keys in a directory of the test's own."""
    db = (
        str(tmp_path / "ledger.sqlite3")
        if request.param == "sqlite"
        else request.getfixturevalue("postgres_url")
    )
    keys_dir = tmp_path / "keys"
    port = free_port()
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "aicm_tasks", "serve", "--host", "127.0.0.1"),
            *("--port", str(port), "--db", db, "--keys-dir", str(keys_dir)),
        ],
        env={**os.environ, "AICM_SERVER_API_KEY": API_KEY},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _healthy(url), 30, "aicm-tasks serve")
        yield Served(url, keys_dir, process)
    finally:
        stop_process(process)


@pytest.fixture
def client(served: Served, tmp_path: Path) -> Iterator[CostManagerClient]:
    # The SDK's triggered-limits cache is a process global: each test starts empty.
    triggered_limits_cache.clear()
    with CostManagerClient(
        aicm_api_key=API_KEY,
        aicm_api_base=served.url,
        aicm_ini_path=str(tmp_path / "AICM.INI"),
    ) as sdk_client:
        yield sdk_client
    triggered_limits_cache.clear()


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def record(customer_key: str | None = None) -> dict[str, Any]:
    return {
        "service_key": SERVICE,
        "response_id": uuid.uuid4().hex,
        "timestamp": f"{time.time():.3f}",
        "payload": {"input_tokens": 1000, "output_tokens": 100},
        "customer_key": customer_key,
    }


def track(url: str, records: list[dict[str, Any]]) -> dict[str, Any]:
    response = httpx.post(
        f"{url}/api/v1/track",
        headers={"Authorization": f"Bearer {API_KEY}"},
        json={"tracked": records},
        timeout=30,
    )
    response.raise_for_status()
    document: dict[str, Any] = response.json()
    return document


def sdk_decoded(tmp_path: Path, triggered_limits: dict[str, Any], **match: str) -> list[Any]:
    """The SDK's own reading of a ``triggered_limits`` object: its ConfigManager decodes it."""
    triggered_limits_cache.clear()
    manager = ConfigManager(ini_path=str(tmp_path / f"decode-{uuid.uuid4().hex}.ini"), load=False)
    manager.write_triggered_limits(dict(triggered_limits))
    return manager.get_triggered_limits(**match)


def test_a_limit_made_with_the_sdk_client_trips_from_tracked_usage_and_the_sdk_decodes_it(
    served: Served, client: CostManagerClient, receiver: Receiver, tmp_path: Path
) -> None:
    hook = client.create_webhook_endpoint(
        WebhookEndpointCreate(url=receiver.url, secret="whsec-test")
    )
    assert isinstance(hook, WebhookEndpointOut)
    limit = client.create_usage_limit(
        UsageLimitIn(
            threshold_type=ThresholdType.LIMIT,
            amount="0.001",
            period=Period.MONTH,
            service_key=SERVICE,
            client="acme",
        )
    )
    assert isinstance(limit, UsageLimitOut)
    assert (limit.service, limit.client, limit.active) == (SERVICE, "acme", True)
    assert [item.uuid for item in client.list_usage_limits()] == [limit.uuid]
    assert client.get_usage_limit(limit.uuid).amount == pytest.approx(0.001)

    # Four records cost 0.00084 USD: under the limit, nothing triggered.
    answer = track(served.url, [record("acme") for _ in range(4)])
    assert {r["status"] for r in answer["results"]} == {"completed"}
    assert sdk_decoded(tmp_path, answer["triggered_limits"]) == []
    # Another customer's spend is not acme's.
    answer = track(served.url, [record("globex") for _ in range(3)])
    assert sdk_decoded(tmp_path, answer["triggered_limits"]) == []

    # The fifth acme record reaches 0.00105 USD: the answer that carried it trips the limit.
    answer = track(served.url, [record("acme")])
    tripped = sdk_decoded(tmp_path, answer["triggered_limits"], service_key=SERVICE)
    assert [t.limit_id for t in tripped] == [limit.uuid]
    assert tripped[0].customer_key == "acme"
    assert tripped[0].api_key_id == "key-id-7"  # the key's id, never its secret part
    assert tripped[0].threshold_type == "limit" and tripped[0].period == "month"
    assert API_KEY not in json.dumps(answer["triggered_limits"])
    # The SDK's match rules: a record of another customer is not stopped by it.
    assert sdk_decoded(tmp_path, answer["triggered_limits"], customer_key="globex") == []

    # GET /triggered-limits answers the same set, through the SDK's client.
    fetched = client.get_triggered_limits()
    assert fetched["triggered_limits"]["encrypted_payload"]
    # The SDK's callers unwrap the answer's "triggered_limits" before decoding it.
    assert [t.limit_id for t in sdk_decoded(tmp_path, fetched["triggered_limits"])] == [limit.uuid]

    (progress,) = client.list_usage_limit_progress()
    assert isinstance(progress, UsageLimitProgressOut)
    assert progress.current_spend == pytest.approx(5 * RECORD_USD)
    assert progress.remaining_amount == 0

    # The webhook got the event after one 500: retried, signed with the endpoint's secret.
    wait_until(lambda: 200 in receiver.statuses, 60, "the webhook's successful delivery")
    assert receiver.statuses[:2] == [500, 200]
    first, second = (json.loads(body) for body in receiver.bodies[:2])
    assert first == second  # the retry is the same event
    assert first["type"] == "usage_limit.triggered"
    assert first["data"]["limit_id"] == limit.uuid
    assert first["data"]["current_spend"] == pytest.approx(5 * RECORD_USD)
    sent_at, digest = (part.split("=", 1)[1] for part in receiver.signatures[1].split(","))
    expected = hmac.new(
        b"whsec-test", f"{sent_at}.".encode() + receiver.bodies[1], hashlib.sha256
    ).hexdigest()
    assert hmac.compare_digest(digest, expected)

    # More spend does not notify again: one trip per period.
    track(served.url, [record("acme")])
    assert len(receiver.bodies) == 2

    # Raising the amount un-trips it; deleting it leaves nothing triggered.
    raised = client.update_usage_limit(
        limit.uuid,
        UsageLimitIn(
            threshold_type=ThresholdType.LIMIT,
            amount=5,
            period=Period.MONTH,
            service_key=SERVICE,
            client="acme",
        ),
    )
    assert raised.amount == 5
    assert sdk_decoded(tmp_path, client.get_triggered_limits()["triggered_limits"]) == []
    client.delete_usage_limit(limit.uuid)
    with pytest.raises(APIRequestError) as missing:
        client.get_usage_limit(limit.uuid)
    assert missing.value.status_code == 404
    assert list(client.list_usage_limits()) == []

    # The signing key was made at first start, readable by its owner only.
    key_file = served.keys_dir / PRIVATE_KEY_FILE
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600


def test_the_sdk_tracker_raises_usage_limit_exceeded_from_the_servers_answer(
    served: Served, client: CostManagerClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    client.create_usage_limit(
        UsageLimitIn(
            threshold_type=ThresholdType.LIMIT, amount=0, period=Period.DAY, service_key=SERVICE
        )
    )
    # An alert of the same scope trips too, but is not enforced: only the limit raises.
    alert = client.create_usage_limit(
        UsageLimitIn(
            threshold_type=ThresholdType.ALERT, amount=0, period=Period.DAY, service_key=SERVICE
        )
    )
    ini = tmp_path / "tracker.ini"
    ini.write_text("[tracker]\nAICM_LIMITS_ENABLED = true\nAICM_RAISE_ON_ERROR = true\n")
    monkeypatch.setenv("AICM_API_BASE", served.url)
    triggered_limits_cache.clear()
    tracker = Tracker(aicm_api_key=API_KEY, ini_path=str(ini), delivery_type="immediate")
    try:
        with pytest.raises(UsageLimitExceeded) as exceeded:
            tracker.track(SERVICE, {"input_tokens": 10, "output_tokens": 1})
    finally:
        tracker.close()
    assert [t.threshold_type for t in exceeded.value.triggered_limits] == ["limit"]
    (alert_progress,) = [p for p in client.list_usage_limit_progress() if p.uuid == alert.uuid]
    assert alert_progress.current_spend > 0


def test_webhooks_crud_through_the_sdk_client(
    served: Served, client: CostManagerClient, receiver: Receiver
) -> None:
    made = client.create_webhook_endpoint(
        WebhookEndpointCreate(url=receiver.url, secret="s1", tolerance=60)
    )
    other = client.create_webhook_endpoint(
        WebhookEndpointCreate(url=receiver.url + "/2", secret="s2", active=False)
    )
    listed = client.list_webhook_endpoints()
    assert (listed.total_count, listed.active_count) == (2, 1)
    assert [e.uuid for e in listed.endpoints] == [made.uuid, other.uuid]
    assert [e.uuid for e in client.list_webhook_endpoints(active_only=True).endpoints] == [
        made.uuid
    ]
    assert client.get_webhook_endpoint(made.uuid).tolerance == 60
    updated = client.update_webhook_endpoint(other.uuid, WebhookEndpointUpdate(active=True))
    assert updated.active and updated.url == receiver.url + "/2" and updated.secret == "s2"
    client.delete_webhook_endpoint(made.uuid)
    assert [e.uuid for e in client.list_webhook_endpoints().endpoints] == [other.uuid]
    with pytest.raises(APIRequestError) as missing:
        client.get_webhook_endpoint(made.uuid)
    assert missing.value.status_code == 404
    with pytest.raises(APIRequestError) as refused:
        client.create_webhook_endpoint({"url": "ftp://nope", "secret": "x"})
    assert refused.value.status_code == 400


def test_the_async_sdk_client_manages_limits_and_reads_the_triggered_set(
    served: Served, tmp_path: Path
) -> None:
    async def scenario() -> tuple[str, list[Any], list[Any]]:
        async with AsyncCostManagerClient(
            aicm_api_key=API_KEY,
            aicm_api_base=served.url,
            aicm_ini_path=str(tmp_path / "ASYNC.INI"),
        ) as sdk_client:
            limit = await sdk_client.create_usage_limit(
                UsageLimitIn(
                    threshold_type=ThresholdType.LIMIT,
                    amount=0,
                    period=Period.DAY,
                    service_key=SERVICE,
                )
            )
            await asyncio.to_thread(track, served.url, [record()])
            fetched = await sdk_client.get_triggered_limits()
            progress = list(await sdk_client.list_usage_limit_progress())
            return limit.uuid, sdk_decoded(tmp_path, fetched["triggered_limits"]), progress

    limit_id, tripped, progress = asyncio.run(scenario())
    assert [t.limit_id for t in tripped] == [limit_id]
    assert [p.current_spend for p in progress] == [pytest.approx(RECORD_USD)]
