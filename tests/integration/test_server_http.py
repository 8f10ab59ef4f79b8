"""The local /track server over real HTTP: uvicorn on 127.0.0.1, an httpx client."""

from __future__ import annotations

import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from aicm_tasks.devtools.processes import free_port, wait_until
from aicm_tasks.server import create_server_app

pytestmark = pytest.mark.integration

API_KEY = "integration-key"
AUTH = {"Authorization": f"Bearer {API_KEY}"}


@contextmanager
def serving(db_path: Path) -> Iterator[str]:
    """Run the server with uvicorn in a thread; yield its base URL; stop it on exit."""
    app = create_server_app(api_key=API_KEY, db=str(db_path))
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    )
    thread = threading.Thread(target=server.run, name="track-server", daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started, timeout_s=10, what="the local /track server")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    assert not thread.is_alive(), "the server did not stop"


def make_record(i: int, service_key: str = "openai::gpt-4o-mini") -> dict[str, Any]:
    return {
        "service_key": service_key,
        "response_id": uuid.uuid4().hex,
        "timestamp": "1732270000.123",
        "payload": {"input_tokens": i, "output_tokens": 2 * i},
        "customer_key": f"customer-{i % 7}",
        "context": {"env": "test"},
    }


def make_batch(size: int) -> list[dict[str, Any]]:
    """``size`` records: all known and valid but the last five unknown and five invalid."""
    records = [
        make_record(i, "openai::gpt-4o-mini" if i % 2 else "anthropic::claude-3-5-haiku-20241022")
        for i in range(size)
    ]
    for record in records[-10:-5]:
        record["service_key"] = "unknown::service"
    for record in records[-5:]:
        record["payload"] = {"input_tokens": -1}
    return records


def post(url: str, records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    response = httpx.post(
        f"{url}/api/v1/track", headers=AUTH, json={"tracked": records}, timeout=30
    )
    response.raise_for_status()
    return {result["response_id"]: result for result in response.json()["results"]}


def stats(url: str) -> dict[str, int]:
    response = httpx.get(f"{url}/api/v1/stats", headers=AUTH, timeout=10)
    response.raise_for_status()
    result: dict[str, int] = response.json()
    return result


def test_a_batch_of_1000_gets_a_result_for_every_record(tmp_path: Path) -> None:
    batch = make_batch(1000)
    with serving(tmp_path / "events.sqlite3") as url:
        results = post(url, batch)

        assert set(results) == {record["response_id"] for record in batch}
        statuses = [results[record["response_id"]]["status"] for record in batch]
        assert statuses == ["completed"] * 990 + ["service_key_unknown"] * 5 + ["error"] * 5
        assert results[batch[-1]["response_id"]]["errors"] == [
            "payload: input_tokens must not be negative"
        ]
        assert stats(url) == {
            "events": 990,
            "received": 1000,
            "duplicates": 0,
            "unknown_service": 5,
            "errors": 5,
        }

        # A replay of the whole batch: every known record is answered again, stored once.
        again = post(url, batch)
        assert [again[r["response_id"]]["status"] for r in batch[:990]] == ["completed"] * 990
        assert stats(url)["duplicates"] == 990
        assert stats(url)["events"] == 990


def test_events_and_dedupe_survive_a_server_restart(tmp_path: Path) -> None:
    db_path = tmp_path / "events.sqlite3"
    batch = [make_record(i) for i in range(50)]
    with serving(db_path) as url:
        post(url, batch)
    with serving(db_path) as url:
        post(url, batch[:10])
        after = stats(url)
        page = httpx.get(
            f"{url}/api/v1/usage/events", params={"limit": 1000}, headers=AUTH, timeout=10
        ).json()
    assert (after["events"], after["received"], after["duplicates"]) == (50, 60, 10)
    assert [event["response_id"] for event in page["events"]] == [r["response_id"] for r in batch]


def test_run_server_serves_in_its_own_process(tmp_path: Path) -> None:
    port = free_port()
    code = (
        "from aicm_tasks.server import run_server; "
        f"run_server(port={port}, api_key={API_KEY!r}, db={str(tmp_path / 'e.sqlite3')!r}, "
        "extra_services=['custom::thing'])"
    )
    process = subprocess.Popen([sys.executable, "-c", code])
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        return httpx.get(f"{url}/healthz", timeout=1).status_code == 200

    try:
        wait_until(healthy, timeout_s=20, what="run_server's process")
        record = make_record(1, "custom::thing")
        assert post(url, [record])[record["response_id"]]["status"] == "queued"
        assert httpx.post(f"{url}/api/v1/track", json={"tracked": []}, timeout=5).status_code == 401
    finally:
        process.terminate()
        process.wait(timeout=10)
