"""Fixtures shared by unit and integration tests: Redis (fake and real)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator

import pytest
import redis

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
    return client


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

        client = fakeredis.FakeRedis()
        yield client
        client.close()
        return
    client = _real_redis_or_skip()
    client.flushdb()
    yield client
    client.flushdb()
    client.close()
