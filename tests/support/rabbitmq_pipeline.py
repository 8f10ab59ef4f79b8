"""The pipeline on RabbitMQ for integration and fault tests: a queue of the test's own
in the session vhost (or on a private node), real ``celery -A aicm_tasks worker``
processes, the local /track server, and exact accounting from the server's
events and the dead-letter stream.

Records are published as the producer builds them (``Record.message``) with
confirmed publishes to the record queue (``ConfirmedPublishes``).
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import amqp
import pytest

from aicm_tasks.broker.rabbitmq.confirms import ConfirmedPublishes
from aicm_tasks.broker.rabbitmq.connection import close_quietly, open_connection
from aicm_tasks.broker.rabbitmq.events import fold_dead_letters
from aicm_tasks.broker.rabbitmq.names import RabbitNames
from aicm_tasks.broker.rabbitmq.topology import declare_topology
from aicm_tasks.devtools.processes import start_worker, stop_process, wait_until
from aicm_tasks.producer.record import build_record
from tests.support.accounting import RESULTS_FILE, Accounting
from tests.support.pipeline import FAST_WORKER_ENV, LocalServer
from tests.support.rabbitmq import RabbitVhost
from tests.support.rabbitmq_messages import queue_counts
from tests.support.rabbitmq_topology import delete_topology

#: Worker settings for RabbitMQ tests: as on Redis, faults play out in seconds.
RABBIT_WORKER_ENV = {**FAST_WORKER_ENV, "AICM_DELIVERY_CONCURRENCY": "2"}


def record_messages(
    count: int, *, prefix: str = "r", service: str = "openai::gpt-4o-mini"
) -> dict[str, bytes]:
    """``count`` records as the producer builds them: response_id -> broker message."""
    records = [
        build_record(service, {"input_tokens": n, "output_tokens": 1}, response_id=f"{prefix}{n}")
        for n in range(count)
    ]
    return {record.response_id: record.message for record in records}


@dataclass
class RabbitPipeline:
    """One test's pipeline: its own queue name on a RabbitMQ (vhost or private node)."""

    url: str
    server: LocalServer
    api_base: str
    log_dir: Path
    queue: str = field(default_factory=lambda: f"t.{uuid.uuid4().hex[:8]}.tracking")
    #: A delay topology of the test's own (28 levels, about 0.5 s to declare), so
    #: that wait_drained's count of delayed records is this test's alone.
    prefix: str = field(default_factory=lambda: f"t{uuid.uuid4().hex[:8]}")
    #: Delete the topology once the workers stopped (the session vhost's pipelines:
    #: 33 queues each would otherwise stay until the session ends; a private node's
    #: die with it).
    delete_at_stop: bool = False
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.names = RabbitNames(self.queue, self.prefix)
        declare_topology(self.url, self.names)

    def worker_env(self, **extra: str) -> dict[str, str]:
        return {
            **RABBIT_WORKER_ENV,
            "AICM_BROKER_URL": self.url,
            "AICM_QUEUE": self.queue,
            "AICM_KEY_PREFIX": self.prefix,
            "AICM_API_KEY": self.server.api_key,
            "AICM_API_BASE": self.api_base,
            **extra,
        }

    def start_worker(self, wait: bool = True, **extra: str) -> subprocess.Popen[bytes]:
        """A ``celery -A aicm_tasks worker`` subprocess; waits until it consumes the queue."""
        before = self.consumers() if wait else 0
        name = f"w{len(self.workers)}-{uuid.uuid4().hex[:6]}"
        process = start_worker(
            self.worker_env(**extra), name=name, log_path=self.log_dir / f"{name}.log"
        )
        self.workers.append(process)
        if wait:
            wait_until(
                lambda: self.consumers() > before or process.poll() is not None,
                90,
                "a worker to consume the record queue",
            )
            assert process.poll() is None, self.logs()
        return process

    # -- the broker -----------------------------------------------------------
    def connect(self) -> amqp.Connection:
        return open_connection(self.url, timeout_s=10)

    def counts(self, queue: str | None = None) -> tuple[int, int]:
        """``(ready, consumers)`` of ``queue`` (default: the record queue)."""
        connection = self.connect()
        try:
            return queue_counts(connection.channel(), queue or self.queue)
        finally:
            close_quietly(connection)

    def consumers(self) -> int:
        try:
            return self.counts()[1]
        except Exception:  # the broker restarting: no consumer known
            return 0

    def publish(self, messages: dict[str, bytes] | list[bytes], chunk: int = 1000) -> None:
        """Publish ``messages`` to the record queue, confirmed (one wait per chunk)."""
        bodies = list(messages.values()) if isinstance(messages, dict) else list(messages)
        connection = self.connect()
        try:
            publishes = ConfirmedPublishes(connection.channel())
            for start in range(0, len(bodies), chunk):
                for body in bodies[start : start + chunk]:
                    publishes.publish(body, routing_key=self.queue)
                refused = publishes.wait(30)
                assert not refused, f"RabbitMQ refused {len(refused)} test records"
        finally:
            close_quietly(connection)

    def dead_letters(self) -> dict[str, dict[str, Any]]:
        """The live dead letters: the fold of the dead-letter stream."""
        return fold_dead_letters(read_whole_stream(self.url, self.names.dead_letters))

    def figures(self) -> list[dict[str, Any]]:
        return [json.loads(m) for m in read_whole_stream(self.url, self.names.figures)]

    # -- waiting and accounting ---------------------------------------------------
    def delivered(self) -> int:
        return int(self.server.stats().get("events", 0))

    def wait_delivered(self, count: int, timeout_s: float = 120) -> None:
        wait_until(
            lambda: self.delivered() >= count,
            timeout_s,
            f"{count} records delivered (now {self.delivered()})",
            interval_s=0.2,
        )

    def wait_drained(self, timeout_s: float = 120) -> None:
        """Until the record queue holds nothing ready or unacknowledged (by passive
        declare: ready only; so also until no delay level holds one of ours)."""

        def empty() -> bool:
            connection = self.connect()
            try:
                channel = connection.channel()
                if queue_counts(channel, self.queue)[0]:
                    return False
                return all(
                    queue_counts(channel, level)[0] == 0 for level in self.names.delay_levels()
                )
            finally:
                close_quietly(connection)

        wait_until(empty, timeout_s, "the RabbitMQ pipeline to drain", interval_s=0.3)

    def account(
        self, scenario: str, published: set[str], *, recovery_s: float | None = None
    ) -> Accounting:
        """Compare what was published with what the server and the dead-letter stream hold."""
        delivered = self.server.response_ids() & published
        dead = set(self.dead_letters()) & published
        result = Accounting(
            scenario=f"rabbitmq: {scenario}",
            published=len(published),
            delivered=len(delivered),
            dead_lettered=len(dead),
            spooled=0,
            lost=len(published - delivered - dead),
            duplicates=int(self.server.stats().get("duplicates", 0)),
            recovery_s=None if recovery_s is None else round(recovery_s, 2),
        )
        with RESULTS_FILE.open("a", encoding="utf-8") as out:
            out.write(json.dumps(asdict(result)) + "\n")
        return result

    def logs(self) -> str:
        return "\n".join(
            p.read_text(errors="replace")[-4000:] for p in sorted(self.log_dir.glob("*.log"))
        )

    def stop(self) -> None:
        """Stop the workers, then delete the topology when :attr:`delete_at_stop`."""
        for process in self.workers:
            stop_process(process)
        if self.delete_at_stop:
            delete_topology(self.url, self.names)


def read_whole_stream(url: str, stream: str, quiet_s: float = 1.0) -> list[bytes]:
    """Every message of ``stream`` from its first offset (until none comes for ``quiet_s``)."""
    connection = open_connection(url, timeout_s=10)
    bodies: list[bytes] = []
    try:
        channel = connection.channel()
        channel.basic_qos(prefetch_size=0, prefetch_count=1000, a_global=False)
        received: list[amqp.Message] = []
        channel.basic_consume(
            stream, callback=received.append, no_ack=False, arguments={"x-stream-offset": "first"}
        )
        deadline = time.monotonic() + quiet_s
        while time.monotonic() < deadline:
            try:
                connection.drain_events(timeout=quiet_s)
            except TimeoutError:
                break
            if received:
                for message in received:
                    body = message.body
                    bodies.append(body if isinstance(body, bytes) else body.encode())
                channel.basic_ack(int(received[-1].delivery_info["delivery_tag"]), multiple=True)
                received.clear()
                deadline = time.monotonic() + quiet_s
    finally:
        close_quietly(connection)
    return bodies


@pytest.fixture
def rabbit_pipeline_factory(local_server: LocalServer, tmp_path: Path) -> Iterator[Any]:
    """Make pipelines on RabbitMQ: ``make(url, api_base=None, delete_at_stop=False)``
    (``url``: the session vhost's, or a private node's); their workers are stopped
    at the end (and their topology deleted, with ``delete_at_stop``)."""
    made: list[RabbitPipeline] = []

    def make(url: str, api_base: str | None = None, delete_at_stop: bool = False) -> RabbitPipeline:
        pipeline = RabbitPipeline(
            url, local_server, api_base or local_server.url, tmp_path, delete_at_stop=delete_at_stop
        )
        made.append(pipeline)
        return pipeline

    yield make
    # Every worker first: a failed delete must not leave another pipeline's running.
    for pipeline in made:
        for process in pipeline.workers:
            stop_process(process)
    for pipeline in made:
        pipeline.stop()


@pytest.fixture
def rabbit_pipeline(rabbit_pipeline_factory: Any, rabbitmq_vhost: RabbitVhost) -> RabbitPipeline:
    """A pipeline on the session vhost of the shared RabbitMQ, its topology deleted after."""
    pipeline: RabbitPipeline = rabbit_pipeline_factory(rabbitmq_vhost.url, delete_at_stop=True)
    return pipeline
