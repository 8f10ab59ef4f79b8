"""The image's entry point (worker/entrypoint.sh), run here as the image runs it.

Flower refuses to start without its login, keeps the login off its command
line, and serves its API only to that login; ``serve`` runs its ledger on
PostgreSQL. No Docker daemon needed: the script runs with this virtualenv's
``celery`` and ``aicm-tasks`` on the PATH.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import redis

from aicm_tasks.devtools.processes import free_port, stop_process, wait_until
from tests.conftest import TEST_REDIS_URL

pytestmark = pytest.mark.integration

ENTRYPOINT = Path(__file__).resolve().parents[2] / "worker" / "entrypoint.sh"
FLOWER_LOGIN = "op:flower-pw-5e1d"


def entrypoint_env(**extra: str) -> dict[str, str]:
    """A clean environment, as the compose file gives a container: no stray AICM_* key."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    return {"PATH": path, "HOME": os.environ.get("HOME", "/tmp"), **extra}


def start(*args: str, env: dict[str, str], log: Path | None = None) -> subprocess.Popen[bytes]:
    """The entry point with ``args``; its output in ``log``, or in a pipe to read at exit."""
    output = log.open("wb") if log is not None else subprocess.PIPE
    return subprocess.Popen(
        ["sh", str(ENTRYPOINT), *args], env=env, stdout=output, stderr=subprocess.STDOUT
    )


def test_flower_refuses_to_start_without_its_login(real_redis: redis.Redis) -> None:
    flower = start(
        "flower", f"--port={free_port()}", env=entrypoint_env(AICM_BROKER_URL=TEST_REDIS_URL)
    )
    try:
        output, _ = flower.communicate(timeout=60)
    finally:
        stop_process(flower)
    assert flower.returncode != 0
    assert b"FLOWER_BASIC_AUTH" in output


def test_flower_serves_its_api_to_its_login_only_and_keeps_it_off_the_command_line(
    real_redis: redis.Redis, tmp_path: Path
) -> None:
    port = free_port()
    env = entrypoint_env(AICM_BROKER_URL=TEST_REDIS_URL, FLOWER_BASIC_AUTH=FLOWER_LOGIN)
    # Later options win: the image listens on 5555 on all of the container's
    # interfaces; here a free port on loopback.
    flower = start(
        "flower", f"--port={port}", "--address=127.0.0.1", env=env, log=tmp_path / "flower.log"
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until(
            lambda: httpx.get(f"{base}/healthcheck", timeout=2).status_code == 200, 90, "Flower"
        )
        assert httpx.get(f"{base}/api/workers", timeout=10).status_code == 401
        user, password = FLOWER_LOGIN.split(":")
        answer = httpx.get(f"{base}/api/workers", auth=(user, password), timeout=10)
        assert answer.status_code == 200
        # exec: the entry point's shell became Flower, whose arguments anyone
        # on the host may read (ps, docker top).
        command_line = Path(f"/proc/{flower.pid}/cmdline").read_bytes()
        assert b"flower" in command_line
        assert password.encode() not in command_line
    finally:
        stop_process(flower)


def test_serve_keeps_its_ledger_in_postgresql(postgres_url: str, tmp_path: Path) -> None:
    port = free_port()
    env = entrypoint_env(AICM_SERVER_API_KEY="image-key", AICM_SERVER_DB=postgres_url)
    server = start(
        "serve", "--host", "127.0.0.1", "--port", str(port), env=env, log=tmp_path / "serve.log"
    )
    try:
        base = f"http://127.0.0.1:{port}"
        record = {
            "service_key": "openai::gpt-4o-mini",
            "response_id": "image-entrypoint-1",
            "timestamp": "1732270000.0",
            "payload": {"input_tokens": 10, "output_tokens": 20},
        }

        def track() -> httpx.Response:
            return httpx.post(
                f"{base}/api/v1/track",
                json={"tracked": [record]},
                headers={"Authorization": "Bearer image-key"},
                timeout=10,
            )

        wait_until(lambda: track().status_code == 200, 90, "the local server")
    finally:
        stop_process(server)
    import psycopg

    with psycopg.connect(postgres_url) as conn:
        rows = conn.execute(
            "SELECT count(*) FROM events WHERE response_id = %s", ("image-entrypoint-1",)
        ).fetchone()
    assert rows == (1,)
