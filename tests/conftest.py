"""Fixtures shared by unit and integration tests: Redis (fake and real), PostgreSQL, RabbitMQ."""

from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest
import redis

from tests.support.rabbitmq import TEST_RABBITMQ_URL, RabbitVhost, vhost_or_skip
from tests.support.rabbitmq_node import PrivateRabbit, rabbitmq_server_script
from tests.support.rabbitmq_topology import RabbitTopologies

# Tests never spool into the user's cache directory; a test that needs the
# spool sets its own directory.
os.environ.setdefault("AICM_SPOOL_DIR", tempfile.mkdtemp(prefix="aicm-test-spool-"))

#: The Redis the tests may use; a dedicated db index, flushed around each test.
TEST_REDIS_URL = os.environ.get("AICM_TEST_REDIS_URL", "redis://127.0.0.1:6379/13")


def _real_redis_or_skip() -> redis.Redis:
    client = redis.Redis.from_url(TEST_REDIS_URL, socket_connect_timeout=1)
    try:
        client.ping()
    except redis.RedisError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI needs a Redis at {TEST_REDIS_URL}: {exc}")
        pytest.skip(f"no Redis at {TEST_REDIS_URL}: {exc}")
    _claim_test_db()
    return client


@functools.cache
def _claim_test_db() -> IO[str]:
    """This process's claim on the test db, held until it exits (the open file
    is cached: its lock lives as long as the process).

    Every real-Redis test flushes the db before and after. A second session on
    the same db on this machine flushes under the first one's running workers:
    their leases, held batches, queues and counters vanish mid-test. In a demo
    test that read as a stranding bug (the worker logged "batch ... was
    reclaimed while it filled (lease lost); 100 records were not sent", then
    had nothing left to deliver, and the test waited 5 minutes). So a second
    session fails at once and says what to do. A file lock is freed when its
    process ends, however it ends; sessions on other hosts sharing one Redis
    are not seen.
    """
    digest = hashlib.sha256(TEST_REDIS_URL.encode()).hexdigest()[:16]
    lock = (Path(tempfile.gettempdir()) / f"aicm-tests-redis-{digest}.lock").open("a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "unknown"
        lock.close()
        pytest.fail(
            f"another test session (pid {holder}) is using {TEST_REDIS_URL}; its flushes "
            "would wipe this session's keys mid-test. Wait for it to end, or set "
            "AICM_TEST_REDIS_URL to a db of your own (another /<db> index)."
        )
    lock.seek(0)
    lock.truncate()
    lock.write(str(os.getpid()))
    lock.flush()
    return lock


@pytest.fixture
def real_redis() -> Iterator[redis.Redis]:
    """A real Redis client on the test db, flushed before and after."""
    client = _real_redis_or_skip()
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture(params=["fakeredis", "redis"])
def any_redis(request: pytest.FixtureRequest) -> Iterator[redis.Redis]:
    """The same test over fakeredis (with Lua) and over the real Redis."""
    if request.param == "fakeredis":
        import fakeredis

        client: redis.Redis = fakeredis.FakeRedis()
        yield client
        client.close()
        return
    client = _real_redis_or_skip()
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


def pytest_sessionstart(session: pytest.Session) -> None:
    from tests.support.accounting import RESULTS_FILE

    RESULTS_FILE.unlink(missing_ok=True)


def pytest_terminal_summary(terminalreporter) -> None:
    """The reliability suite's accounting, one row per scenario."""
    from tests.support.accounting import RESULTS_FILE

    if not RESULTS_FILE.exists():
        return
    rows = [json.loads(line) for line in RESULTS_FILE.read_text().splitlines()]
    terminalreporter.section("reliability accounting")
    columns = (
        "scenario",
        "published",
        "delivered",
        "dead_lettered",
        "spooled",
        "lost",
        "duplicates",
        "recovery_s",
    )
    terminalreporter.write_line(" | ".join(columns))
    for row in rows:
        terminalreporter.write_line(
            " | ".join(str(row[c]) if row[c] is not None else "-" for c in columns)
        )


#: A PostgreSQL role allowed to create databases; the tests make one scratch
#: database per session (random name, dropped at the end) and never touch others.
TEST_POSTGRES_URL = os.environ.get(
    "AICM_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """The URL of a scratch PostgreSQL database for this test session."""
    import uuid

    try:
        import psycopg
    except ImportError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI needs psycopg for the PostgreSQL tests: {exc}")
        pytest.skip(f"psycopg is not installed: {exc}")
    try:
        admin = psycopg.connect(TEST_POSTGRES_URL, autocommit=True, connect_timeout=3)
    except psycopg.Error as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI needs a PostgreSQL at {TEST_POSTGRES_URL}: {exc}")
        pytest.skip(f"no PostgreSQL at {TEST_POSTGRES_URL}: {exc}")
    name = f"aicm_test_{uuid.uuid4().hex[:12]}"
    admin.execute(f'CREATE DATABASE "{name}"')
    from urllib.parse import urlsplit, urlunsplit

    try:
        yield urlunsplit(urlsplit(TEST_POSTGRES_URL)._replace(path=f"/{name}"))
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture
def postgres_url(postgres_database: str) -> str:
    """The scratch database, emptied of the ledger's tables before the test."""
    import psycopg

    with psycopg.connect(postgres_database, autocommit=True) as conn:
        conn.execute(
            "DROP TABLE IF EXISTS events, counters, daily_rollups, customers, custom_services"
        )
        # The server's limit tables (server/limit_store.py).
        conn.execute("DROP TABLE IF EXISTS usage_limits, limit_events, webhook_endpoints")
    return postgres_database


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_db(request: pytest.FixtureRequest, tmp_path: object) -> str:
    """The same test over both storages: an SQLite file and the scratch PostgreSQL."""
    if request.param == "sqlite":
        return str(tmp_path) + "/ledger.sqlite3"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture(scope="session")
def rabbitmq_vhost() -> Iterator[RabbitVhost]:
    """A virtual host of its own on the real RabbitMQ, made for this session and deleted after.

    Skips without a RabbitMQ (fails under CI). ``tests/support/rabbitmq_messages.py``
    has the helpers: quorum queues, confirmed publishes, queue depth, streams.
    """
    with vhost_or_skip(TEST_RABBITMQ_URL, ci=bool(os.environ.get("CI"))) as vhost:
        yield vhost


@pytest.fixture
def rabbit_topologies(rabbitmq_vhost: RabbitVhost) -> Iterator[RabbitTopologies]:
    """The test's topologies in the session vhost, deleted when it ends (also on failure):
    ``rabbit_topologies.new()`` names one (``own_delays=True``: with its own 28 delay levels)."""
    topologies = RabbitTopologies(rabbitmq_vhost.url)
    yield topologies
    topologies.delete_all()


@pytest.fixture
def private_rabbitmq(tmp_path: Path) -> Iterator[PrivateRabbit]:
    """A RabbitMQ node of this test's own (free ports, data in tmp_path), started; stopped after.

    For tests that stop or kill the broker: never the shared one. Skips
    without ``rabbitmq-server`` installed (fails under CI).
    """
    from aicm_tasks.devtools.processes import free_port

    if rabbitmq_server_script() is None:
        if os.environ.get("CI"):
            pytest.fail("CI needs rabbitmq-server installed (.ci/run installs it)")
        pytest.skip("rabbitmq-server is not installed")
    node = PrivateRabbit(tmp_path / "rabbitmq", port=free_port(), dist_port=free_port())
    node.start()
    try:
        yield node
    finally:
        node.stop()
