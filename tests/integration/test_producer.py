"""The producer under a blackholed broker and across forks (prefork web servers)."""

from __future__ import annotations

import json
import multiprocessing
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from aicm_tasks import create_app
from aicm_tasks.errors import PublishError
from aicm_tasks.settings import Settings
from tests.conftest import TEST_REDIS_URL
from tests.support.tasks import spool_of, track_of

pytestmark = pytest.mark.integration


@pytest.fixture
def blackhole() -> Iterator[str]:
    """A TCP port that completes handshakes (kernel backlog) but never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    yield f"redis://127.0.0.1:{server.getsockname()[1]}/0"
    server.close()


def call_with_hang_guard(action, guard_s: float = 20.0) -> object:
    """Run ``action`` in a thread; fail if it has not returned or raised by ``guard_s``
    (a guard against hanging, far above the configured bound, not a speed check)."""
    outcome: list[object] = []

    def run() -> None:
        try:
            outcome.append(action())
        except Exception as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(guard_s)
    assert not thread.is_alive(), "track.delay hung on a blackholed broker"
    return outcome[0]


def test_a_blackholed_broker_makes_track_raise_not_hang_without_spool(blackhole: str) -> None:
    track = track_of(
        create_app(Settings(broker_url=blackhole, publish_timeout_s=1.0, spool_enabled=False))
    )
    outcome = call_with_hang_guard(lambda: track.delay("a::b", {"n": 1}, response_id="bh-1"))
    assert isinstance(outcome, PublishError) and "bh-1" in str(outcome)


def test_a_blackholed_broker_sends_the_record_to_the_spool(blackhole: str, tmp_path: Path) -> None:
    settings = Settings(broker_url=blackhole, publish_timeout_s=1.0, spool_dir=tmp_path)
    track = track_of(create_app(settings))
    outcome = call_with_hang_guard(lambda: track.delay("a::b", {"n": 1}, response_id="bh-2"))
    assert outcome.id == "bh-2"  # type: ignore[attr-defined]
    assert spool_of(track).status().records == 1


def _child_publishes(start: int) -> None:
    import aicm_tasks.tasks  # noqa: F401  (the inherited app and track)

    track = track_of(_APP)
    for n in range(start, start + 300):
        track.delay("a::b", {"n": n}, response_id=f"fork{n}")


_APP = create_app(Settings(broker_url=TEST_REDIS_URL))


def test_forked_children_publish_through_their_own_connections(real_redis: redis.Redis) -> None:
    track = track_of(_APP)
    track.delay("a::b", {"n": -1}, response_id="parent-before")  # the parent's pool is in use
    context = multiprocessing.get_context("fork")
    children = [context.Process(target=_child_publishes, args=(k * 1000,)) for k in range(4)]
    for child in children:
        child.start()
    track.delay("a::b", {"n": -2}, response_id="parent-during")
    for child in children:
        child.join(60)
        assert child.exitcode == 0
    track.delay("a::b", {"n": -3}, response_id="parent-after")
    ids = {json.loads(m)["response_id"] for m in real_redis.lrange("aicm.tracking", 0, -1)}
    expected = {f"fork{n}" for k in range(4) for n in range(k * 1000, k * 1000 + 300)}
    assert ids == expected | {"parent-before", "parent-during", "parent-after"}
