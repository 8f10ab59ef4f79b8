"""Real parts for integration and reliability tests: the test Redis, the local
/track server and worker subprocesses, one pipeline per test."""

from __future__ import annotations

import json
import secrets
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from aicm_tasks import create_app
from aicm_tasks.broker.dead_letters import DeadLetterStore
from aicm_tasks.broker.keys import Keys, dead_lettered_by_reason
from aicm_tasks.broker.records import RecordStore
from aicm_tasks.devtools.processes import (
    free_port,
    start_redis,
    start_server,
    start_worker,
    stop_process,
    wait_until,
)
from aicm_tasks.settings import Settings
from tests.conftest import TEST_REDIS_URL
from tests.support.tasks import track_of

#: Worker settings that make faults play out in seconds rather than minutes.
FAST_WORKER_ENV = {
    "AICM_FLUSH_INTERVAL_S": "0.2",
    "AICM_RETRY_BASE_S": "0.2",
    "AICM_RETRY_MAX_S": "1",
    "AICM_REDELIVERY_TIMEOUT_S": "3",
    "AICM_AUTH_RETRY_INTERVAL_S": "0.5",
    "AICM_HTTP_TIMEOUT_S": "5",
}


@dataclass
class LocalServer:
    url: str
    api_key: str
    process: subprocess.Popen[bytes]

    def get(self, path: str) -> Any:
        response = httpx.get(
            f"{self.url}{path}", headers={"Authorization": f"Bearer {self.api_key}"}, timeout=10
        )
        response.raise_for_status()
        return response.json()

    def stats(self) -> dict[str, int]:
        return self.get("/api/v1/stats")

    def learn(self, service_key: str) -> None:
        httpx.put(
            f"{self.url}/api/v1/services/{service_key}",
            headers={"Authorization": f"Bearer {self.api_key}"},
            timeout=10,
        ).raise_for_status()

    def response_ids(self) -> set[str]:
        ids: set[str] = set()
        offset = 0
        while True:
            page = self.get(f"/api/v1/usage/events?limit=1000&offset={offset}")["events"]
            ids.update(event["response_id"] for event in page)
            if len(page) < 1000:
                return ids
            offset += 1000


@pytest.fixture
def local_server(tmp_path: Path) -> Iterator[LocalServer]:
    port = free_port()
    api_key = secrets.token_urlsafe(16)
    process = start_server(port, tmp_path / "events.sqlite3", api_key)
    yield LocalServer(f"http://127.0.0.1:{port}", api_key, process)
    stop_process(process)


@dataclass
class Pipeline:
    """One test's pipeline: its own queue and key prefix on the test Redis."""

    settings: Settings
    server: LocalServer
    api_base: str
    log_dir: Path
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.app = create_app(self.settings)
        self.track = track_of(self.app)
        self.client = redis.Redis.from_url(self.settings.broker_url)
        self.store = RecordStore(self.client, Keys(self.settings.queue, self.settings.key_prefix))
        self.dead_letters = DeadLetterStore(self.client, self.store.keys)

    def worker_env(self, **extra: str) -> dict[str, str]:
        return {
            **FAST_WORKER_ENV,
            "AICM_BROKER_URL": self.settings.broker_url,
            "AICM_QUEUE": self.settings.queue,
            "AICM_KEY_PREFIX": self.settings.key_prefix,
            "AICM_API_KEY": self.server.api_key,
            "AICM_API_BASE": self.api_base,
            **extra,
        }

    def cli_env(self) -> dict[str, str]:
        """What an operator's shell needs to point aicm-tasks at this pipeline."""
        return {
            "AICM_BROKER_URL": self.settings.broker_url,
            "AICM_QUEUE": self.settings.queue,
            "AICM_KEY_PREFIX": self.settings.key_prefix,
        }

    def start_worker(self, wait: bool = True, **extra: str) -> subprocess.Popen[bytes]:
        name = f"w{len(self.workers)}-{uuid.uuid4().hex[:6]}"
        process = start_worker(
            self.worker_env(**extra), name=name, log_path=self.log_dir / f"{name}.log"
        )
        self.workers.append(process)
        if wait:
            # Its lease names its pid: hostname:pid:nonce.
            def registered() -> bool:
                members = self.client.zrange(self.store.keys.consumers, 0, -1)
                return any(f":{process.pid}:".encode() in m for m in members)

            wait_until(
                lambda: registered() or process.poll() is not None, 60, "a worker to register"
            )
            assert process.poll() is None, self.logs()
        return process

    def settled(self) -> int:
        stats = self.store.stats()
        return stats.get("delivered", 0) + sum(dead_lettered_by_reason(stats).values())

    def wait_settled(self, count: int, timeout_s: float = 120) -> None:
        wait_until(
            lambda: self.settled() >= count,
            timeout_s,
            f"{count} records settled (now {self.settled()})",
            interval_s=0.1,
        )

    def wait_drained(self, timeout_s: float = 120) -> None:
        """Until nothing is queued, scheduled or held."""

        def empty() -> bool:
            depth = self.store.depth()
            return depth["queued"] == 0 and depth["scheduled"] == 0 and depth["held"] == 0

        wait_until(empty, timeout_s, "the pipeline to drain", interval_s=0.1)

    def logs(self) -> str:
        return "\n".join(
            p.read_text(errors="replace")[-4000:] for p in sorted(self.log_dir.glob("*.log"))
        )

    def stop(self) -> None:
        for process in self.workers:
            stop_process(process)


@pytest.fixture
def pipeline_factory(
    real_redis: redis.Redis, local_server: LocalServer, tmp_path: Path
) -> Iterator[Any]:
    made: list[Pipeline] = []

    def make(api_base: str | None = None, broker_url: str = TEST_REDIS_URL) -> Pipeline:
        run = uuid.uuid4().hex[:6]
        settings = Settings(
            broker_url=broker_url, queue=f"aicm.test.{run}", key_prefix=f"aicm-test-{run}"
        )
        pipeline = Pipeline(settings, local_server, api_base or local_server.url, tmp_path)
        made.append(pipeline)
        return pipeline

    yield make
    for pipeline in made:
        pipeline.stop()


@pytest.fixture
def pipeline(pipeline_factory: Any) -> Pipeline:
    return pipeline_factory()


def publish(
    pipeline: Pipeline, count: int, service: str = "openai::gpt-4o-mini", prefix: str = "r"
) -> list[str]:
    """Publish ``count`` records through track.delay; returns their response_ids."""
    ids = []
    for n in range(count):
        ids.append(
            pipeline.track.delay(
                service, {"input_tokens": n, "output_tokens": 1}, response_id=f"{prefix}{n}"
            ).id
        )
    return ids


def publish_paced(
    pipeline: Pipeline, count: int, per_s: int, prefix: str = "p", track: Any = None
) -> list[str]:
    """Publish ``count`` records at about ``per_s`` per second (absolute schedule)."""
    track = track or pipeline.track
    ids = []
    started = time.monotonic()
    for n in range(count):
        ids.append(
            track.delay("openai::gpt-4o-mini", {"input_tokens": n}, response_id=f"{prefix}{n}").id
        )
        ahead_s = started + n / per_s - time.monotonic()
        if ahead_s > 0:
            time.sleep(ahead_s)
    return ids


def in_background(target: Any, *args: Any) -> tuple[threading.Thread, list[str]]:
    """Run a publishing function in a thread; the list fills with its ids when done."""
    ids: list[str] = []
    thread = threading.Thread(target=lambda: ids.extend(target(*args)), daemon=True)
    thread.start()
    return thread, ids


def dump(value: Any) -> str:
    return json.dumps(value, indent=1, default=str)[:3000]


class PrivateRedis:
    """A redis-server of the test's own (AOF on unless ``appendonly=False``), which
    it may stop and restart on the same port and data directory. ``extra_args``
    go to redis-server after the defaults, so they override them
    (``--maxmemory-policy allkeys-lru``)."""

    def __init__(
        self, data_dir: Path, *, appendonly: bool = True, extra_args: tuple[str, ...] = ()
    ) -> None:
        self.port = free_port()
        self.data_dir = data_dir
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.appendonly = appendonly
        self.extra_args = extra_args
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = start_redis(
            self.port, self.data_dir, appendonly=self.appendonly, extra_args=self.extra_args
        )

    def stop(self) -> None:
        """SIGTERM: Redis flushes its AOF and exits."""
        if self.process is not None:
            stop_process(self.process)
            self.process = None


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path / "private-redis")
    server.start()
    yield server
    server.stop()
