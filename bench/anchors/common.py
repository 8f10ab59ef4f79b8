"""What the two bench-only Celery anchor apps share: settings from ``BENCH_*`` and one POST."""

from __future__ import annotations

import os
from typing import Any

import httpx
import redis
from celery import Celery
from celery.signals import worker_ready

from bench.records import API_KEY

#: Where an anchor app points when ``BENCH_BROKER_URL`` is unset: an in-memory
#: broker, so importing the module by accident never reaches a real Redis.
UNSET_BROKER = "memory://"

_client: httpx.Client | None = None


def broker_url() -> str:
    """``BENCH_BROKER_URL`` (the benchmark's private Redis)."""
    return os.environ.get("BENCH_BROKER_URL", UNSET_BROKER)


def queue_name(default: str) -> str:
    """``BENCH_QUEUE``: the Celery queue of this run."""
    return os.environ.get("BENCH_QUEUE", default)


def track_url() -> str:
    """``BENCH_TRACK_URL``: the stub's ``/track`` URL."""
    return os.environ.get("BENCH_TRACK_URL", "http://127.0.0.1:9/api/v1/track")


def base_app(name: str, queue: str) -> Celery:
    """A Celery app on the private Redis with the settings both anchors share."""
    app = Celery(name, broker=broker_url(), set_as_current=False)
    app.conf.update(
        task_default_queue=queue,
        task_ignore_result=True,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=True,
    )
    worker_ready.connect(_mark_ready, weak=False)
    return app


def ready_key(queue: str) -> str:
    """The Redis key where an anchor worker writes when it is ready (see drain)."""
    return f"bench:ready:{queue}"


def _mark_ready(sender: Any = None, **_: Any) -> None:
    """On Celery's ``worker_ready``: tell the benchmark, through its Redis."""
    if broker_url() == UNSET_BROKER:
        return
    redis.Redis.from_url(broker_url()).set(ready_key(queue_name("")), "1")


def post_records(records: list[dict[str, Any]]) -> None:
    """POST ``{"tracked": records}`` to the stub with this process's keep-alive client.

    The client is made on first use, so each prefork child has its own.
    """
    global _client
    if _client is None:
        _client = httpx.Client(timeout=30.0, headers={"Authorization": f"Bearer {API_KEY}"})
    response = _client.post(track_url(), json={"tracked": records})
    response.raise_for_status()
