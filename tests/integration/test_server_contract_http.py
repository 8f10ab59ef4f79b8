"""A real ``aicm-tasks serve`` on 127.0.0.1, over HTTP: it accepts every record the call
site accepts (SQLite and PostgreSQL), refuses bad parameters with 400, and takes its key
from a file (``--api-key`` warns that the key shows in the process list)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aicm_tasks.devtools.processes import free_port, stop_process, wait_until
from tests.support.contract import call_site_inputs, records_built_from

pytestmark = pytest.mark.integration

API_KEY = "key-from-a-file"


def _serve(args: list[str], tmp_path: Path) -> tuple[subprocess.Popen[bytes], str]:
    """Start ``aicm-tasks serve`` with ``args`` and no key in its environment."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("AICM_SERVER_API_KEY", "AICM_API_KEY")}
    process = subprocess.Popen(
        [sys.executable, "-m", "aicm_tasks", "serve", "--port", str(port), *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=tmp_path,
    )
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        try:
            return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(healthy, timeout_s=30, what="aicm-tasks serve")
    except TimeoutError:
        stop_process(process)
        raise
    return process, url


@pytest.fixture
def server(ledger_db: str, tmp_path: Path) -> Iterator[str]:
    """``aicm-tasks serve --api-key-file`` over SQLite or PostgreSQL; its base URL."""
    key_file = tmp_path / "server.key"
    key_file.write_text(f"  {API_KEY}\n")
    process, url = _serve(["--db", ledger_db, "--api-key-file", str(key_file)], tmp_path)
    try:
        yield url
    finally:
        stop_process(process)
        assert process.stderr is not None
        stderr = process.stderr.read().decode()
        assert "Traceback" not in stderr, stderr
        assert API_KEY not in stderr


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(inputs=st.lists(call_site_inputs(), min_size=1, max_size=5))
def test_a_real_server_accepts_every_record_build_record_accepts(
    server: str, inputs: list[dict[str, Any]]
) -> None:
    built = records_built_from(inputs)
    if not built:
        return
    # The bytes the worker sends: the record bodies as built, untouched.
    body = b'{"tracked":[' + b",".join(record.body for record in built) + b"]}"
    response = httpx.post(
        f"{server}/api/v1/track",
        content=body,
        headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    results = {result["response_id"]: result for result in response.json()["results"]}
    assert set(results) == {record.response_id for record in built}
    for record in built:
        assert results[record.response_id]["status"] in {
            "queued",
            "completed",
            "service_key_unknown",
        }, (json.loads(record.body), results[record.response_id])


def test_a_real_server_answers_400_to_bad_parameters_and_401_to_another_key(server: str) -> None:
    auth = {"Authorization": f"Bearer {API_KEY}"}
    for path, params in [
        ("/api/v1/usage/events", {"offset": str(10**20)}),
        ("/api/v1/usage/events", {"customer_key": "\x00"}),
        ("/api/v1/costs", {"end": "9999-13-01"}),
    ]:
        response = httpx.get(f"{server}{path}", params=params, headers=auth, timeout=10)
        assert response.status_code == 400, (path, params, response.text)
        assert response.json()["detail"]
    ok = httpx.get(f"{server}/api/v1/usage/events", params={"end": "9999-12-31"}, headers=auth)
    assert ok.status_code == 200
    deep = b'{"tracked": [' + b"[" * 50_000 + b"]" * 50_000 + b"]}"
    assert httpx.post(f"{server}/api/v1/track", content=deep, headers=auth).status_code == 400
    wrong = httpx.get(f"{server}/api/v1/stats", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401


def test_api_key_on_the_command_line_works_but_warns(tmp_path: Path) -> None:
    key = "visible-in-ps"
    process, url = _serve(["--db", str(tmp_path / "l.sqlite3"), "--api-key", key], tmp_path)
    try:
        response = httpx.get(f"{url}/api/v1/stats", headers={"Authorization": f"Bearer {key}"})
        assert response.status_code == 200
    finally:
        stop_process(process)
    assert process.stderr is not None
    stderr = process.stderr.read().decode()
    assert "warning: --api-key puts the key in the process list" in stderr
    assert "--api-key-file" in stderr


def test_an_empty_key_file_is_refused(tmp_path: Path) -> None:
    key_file = tmp_path / "empty.key"
    key_file.write_text("\n")
    result = subprocess.run(
        [sys.executable, "-m", "aicm_tasks", "serve", "--api-key-file", str(key_file)],
        capture_output=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode != 0
    assert b"is empty" in result.stderr
