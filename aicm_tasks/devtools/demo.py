"""``aicm-tasks demo``: the whole pipeline on one machine, measured.

Starts the local server and a worker (and a private Redis when none answers;
on RabbitMQ, ``AICM_BROKER_URL=amqp://...``, a queue of its own and no Redis),
publishes records through ``track.delay`` (some with unknown service keys, some
the server rejects), waits until every record is delivered or dead-lettered,
and reports. It uses its own queue and key prefix, removed afterwards, so it
never mixes with real data in a shared Redis.
"""

from __future__ import annotations

import json
import logging
import random
import secrets
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import httpx
import redis

from aicm_tasks.app import create_app
from aicm_tasks.broker.keys import dead_lettered_by_reason
from aicm_tasks.broker.rabbitmq.names import RabbitNames
from aicm_tasks.broker.topology import connect
from aicm_tasks.devtools.demo_rabbitmq import RabbitDemoBroker
from aicm_tasks.devtools.processes import (
    free_port,
    redis_answers,
    start_redis,
    start_server,
    start_worker,
    stop_process,
    wait_until,
)
from aicm_tasks.producer.record import build_record
from aicm_tasks.redact import redact_url
from aicm_tasks.settings import Settings

logger = logging.getLogger(__name__)

#: Service keys the local server knows (from the price catalog).
KNOWN_SERVICES = (
    "openai::gpt-4o-mini",
    "openai::gpt-4o",
    "anthropic::claude-3-5-haiku-20241022",
    "google::gemini-2.0-flash",
)
UNKNOWN_SERVICE = "acme::imaginary-model-9000"


@dataclass(frozen=True, slots=True)
class Progress:
    """Where a demo run stands."""

    published: int
    delivered: int
    dead_lettered: int
    elapsed_s: float


@dataclass(frozen=True, slots=True)
class Summary:
    """The end of a demo run."""

    published: int
    delivered: int
    dead_lettered: dict[str, int]
    unique_at_server: int
    duplicates_at_server: int
    seconds: float
    publish_seconds: float
    broker: str
    private_redis: bool
    expected_dead: dict[str, int] = field(default_factory=dict)

    @property
    def records_per_s(self) -> float:
        return (
            (self.delivered + sum(self.dead_lettered.values())) / self.seconds
            if self.seconds
            else 0.0
        )


class Demo:
    """Owns the demo's processes; use as a context manager, then :meth:`run`."""

    def __init__(
        self,
        settings: Settings,
        *,
        records: int = 5000,
        unknown_share: float = 0.02,
        rejected_share: float = 0.01,
        seed: int = 7,
    ) -> None:
        self.settings = settings
        self.records = records
        self.unknown_share = unknown_share
        self.rejected_share = rejected_share
        self.random = random.Random(seed)
        self.run_id = uuid.uuid4().hex[:8]
        self.workdir = Path(tempfile.mkdtemp(prefix="aicm-demo-"))
        self.api_key = secrets.token_urlsafe(24)
        self.port = free_port()
        self.broker_url = settings.broker_url
        self.private_redis = False
        #: The demo's queue on RabbitMQ, when records travel there.
        self.rabbit: RabbitDemoBroker | None = None
        self._processes: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> Demo:
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _start(self) -> None:
        if self.settings.records_on_rabbitmq:
            self._start_on_rabbitmq()
            return
        if not redis_answers(self.broker_url):
            port = free_port()
            self._processes.append(start_redis(port, self.workdir / "redis"))
            self.broker_url = f"redis://127.0.0.1:{port}/0"
            self.private_redis = True
        self.demo_settings = self.settings.model_copy(
            update={
                "broker_url": self.broker_url,
                "queue": f"aicm.demo.{self.run_id}",
                "key_prefix": f"aicm-demo-{self.run_id}",
            }
        )
        self.stores = connect(self.demo_settings).stores
        #: The first shard: where the demo's hand-made records go.
        self.store = self.stores[0]
        self._start_server_and_worker(lambda: self.store.depth()["workers"])

    def _start_on_rabbitmq(self) -> None:
        """The demo's queue of its own on the RabbitMQ of the broker URL (the delay
        levels of the key prefix are shared by design); no Redis at all."""
        self.demo_settings = self.settings.model_copy(update={"queue": f"aicm.demo.{self.run_id}"})
        self.stores = []
        self.rabbit = rabbit = RabbitDemoBroker(
            self.broker_url, RabbitNames(self.demo_settings.queue, self.demo_settings.key_prefix)
        )
        self._start_server_and_worker(rabbit.workers)

    def _start_server_and_worker(self, workers: Callable[[], int]) -> None:
        """The local server and one worker on the demo's queue; waits until
        ``workers()`` sees it (a lease on Redis, a consumer on RabbitMQ)."""
        self._processes.append(
            start_server(self.port, self.workdir / "events.sqlite3", self.api_key)
        )
        env = {
            "AICM_BROKER_URL": self.broker_url,
            "AICM_API_KEY": self.api_key,
            "AICM_API_BASE": f"http://127.0.0.1:{self.port}",
            "AICM_QUEUE": self.demo_settings.queue,
            "AICM_KEY_PREFIX": self.demo_settings.key_prefix,
            # The shards, when configured (the demo then runs over all of them).
            **_shard_env(self.demo_settings),
        }
        worker = start_worker(env, name=f"demo-{self.run_id}", log_path=self.workdir / "worker.log")
        self._processes.append(worker)
        wait_until(lambda: workers() > 0 or worker.poll() is not None, 60, "the worker to start")
        if worker.poll() is not None:
            raise RuntimeError(f"the worker exited at start; see {self.workdir / 'worker.log'}")

    def _push(self, message: bytes) -> None:
        """A hand-made message straight onto the (first shard's) record queue."""
        if self.rabbit is not None:
            self.rabbit.push(message)
        else:
            self.store.push(message)

    def run(
        self, on_progress: Callable[[Progress], None] | None = None, timeout_s: float = 300
    ) -> Summary:
        """Publish the records, wait until each one is settled, and sum up."""
        track = create_app(self.demo_settings).tasks["aicm_tasks.track"]
        expected = {"service_key_unknown": 0, "error": 0}
        started = time.monotonic()
        for n in range(self.records):
            draw = self.random.random()
            usage: dict[str, object] = {
                "input_tokens": self.random.randint(10, 4000),
                "output_tokens": self.random.randint(1, 800),
            }
            service = self.random.choice(KNOWN_SERVICES)
            if draw < self.unknown_share:
                service = UNKNOWN_SERVICE
                expected["service_key_unknown"] += 1
            elif draw < self.unknown_share + self.rejected_share:
                # The call site refuses what the server would answer `error`
                # for, so such a record can only come from a producer that
                # skipped its checks (an older version, a hand-made LPUSH):
                # the demo writes one that way.
                record = build_record(
                    service, usage, customer_key=f"customer-{n % 17}", context={"demo": self.run_id}
                )
                payload = {**record.data["payload"], "input_tokens": "lots"}
                self._push(json.dumps({**record.data, "payload": payload}).encode())
                expected["error"] += 1
                continue
            track.delay(
                service, usage, customer_key=f"customer-{n % 17}", context={"demo": self.run_id}
            )
            if on_progress and n % 500 == 0:
                on_progress(self._progress(n + 1, started))
        publish_seconds = time.monotonic() - started
        deadline = started + timeout_s
        while True:
            progress = self._progress(self.records, started)
            if on_progress:
                on_progress(progress)
            if progress.delivered + progress.dead_lettered >= self.records:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"not every record settled within {timeout_s:.0f}s: {progress}")
            time.sleep(0.1)
        seconds = time.monotonic() - started
        stats = self._stats()
        server = httpx.get(
            f"http://127.0.0.1:{self.port}/api/v1/stats",
            headers={"Authorization": f"Bearer {self.api_key}"},
            timeout=10,
        ).json()
        return Summary(
            published=self.records,
            delivered=stats.get("delivered", 0),
            dead_lettered=dead_lettered_by_reason(stats),
            unique_at_server=int(server.get("events", 0)),
            duplicates_at_server=int(server.get("duplicates", 0)),
            seconds=seconds,
            publish_seconds=publish_seconds,
            broker=self._where(),
            private_redis=self.private_redis,
            expected_dead=expected,
        )

    def _where(self) -> str:
        """Where the records went: the broker, or the shards and their Redis servers."""
        urls = self.demo_settings.shard_urls
        if not urls:
            return redact_url(self.broker_url)
        return f"{len(self.stores)} shards on " + ", ".join(redact_url(u) for u in urls)

    def _stats(self) -> dict[str, int]:
        """The delivery counters of every shard, added up (on RabbitMQ, of the figures stream)."""
        if self.rabbit is not None:
            return self.rabbit.stats()
        total: dict[str, int] = {}
        for store in self.stores:
            for name, count in store.stats().items():
                total[name] = total.get(name, 0) + count
        return total

    def _progress(self, published: int, started: float) -> Progress:
        stats = self._stats()
        dead = sum(dead_lettered_by_reason(stats).values())
        return Progress(published, stats.get("delivered", 0), dead, time.monotonic() - started)

    def close(self) -> None:
        """Stop the worker and server, remove the demo's keys, stop a private Redis."""
        for process in reversed(self._processes):
            if "redis-server" in str(process.args):
                continue
            stop_process(process)
        if self.rabbit is not None:
            self.rabbit.close()
        for store in getattr(self, "stores", []):
            try:
                client = store.client
                doomed = [store.keys.queue, *client.scan_iter(match=f"{store.keys.prefix}:*")]
                # One by one: on a cluster a DEL of several keys must stay in one slot.
                for key in doomed:
                    client.delete(key)
            except redis.RedisError as exc:
                logger.warning("could not remove the demo's keys: %s", exc)
        for process in self._processes:
            stop_process(process)
        self._processes.clear()


def _shard_env(settings: Settings) -> dict[str, str]:
    """The shard settings as the worker's environment (none when unsharded)."""
    env: dict[str, str] = {}
    if settings.shard_urls:
        env["AICM_SHARD_URLS"] = ",".join(settings.shard_urls)
    if settings.redis_cluster:
        env["AICM_REDIS_CLUSTER"] = "true"
    if settings.shards is not None:
        env["AICM_SHARDS"] = str(settings.shards)
    return env
