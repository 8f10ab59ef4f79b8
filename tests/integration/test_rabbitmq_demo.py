"""``aicm-tasks demo`` on RabbitMQ: the broker URL alone, no Redis, cleaned up after."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from tests.support.cli import run_cli
from tests.support.rabbitmq import RabbitVhost

pytestmark = pytest.mark.integration


def _demo_queues(vhost: str) -> list[str]:
    listed = subprocess.run(
        ["rabbitmqctl", "list_queues", "-q", "-p", vhost, "name"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.split()
    return [name for name in listed if name.startswith("aicm.demo.")]


def test_the_demo_runs_on_rabbitmq_and_removes_its_queues(rabbitmq_vhost: RabbitVhost) -> None:
    env = {"AICM_BROKER_URL": rabbitmq_vhost.url}
    result = run_cli("demo", "--records", "400", "--json", env=env, timeout_s=300)
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(result.stdout)
    dead = sum(figures["dead_lettered"].values())
    assert figures["published"] == 400
    assert figures["delivered"] + dead == 400
    assert figures["unique_response_ids_at_server"] == figures["delivered"]
    assert figures["dead_lettered"].get("service_key_unknown", 0) > 0
    assert figures["dead_lettered"].get("error", 0) > 0  # the hand-made record, on RabbitMQ
    assert figures["private_redis"] is False  # no Redis started, none needed
    assert figures["broker"].startswith("amqp://") and ":guest@" not in figures["broker"]
    if shutil.which("rabbitmqctl"):
        assert _demo_queues(rabbitmq_vhost.name) == []
