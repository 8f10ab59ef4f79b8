"""Limits at the call site, over the real Redis: raise after publishing, check before spending."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
import uuid
from typing import Any

import pytest
import redis

from aicm_tasks import check_limits, check_limits_async, create_app
from aicm_tasks.broker.keys import Keys
from aicm_tasks.broker.limits import DEFAULT_SOURCE, LimitStore
from aicm_tasks.devtools.processes import wait_until
from aicm_tasks.errors import UsageLimitError, UsageLimitExceeded
from aicm_tasks.producer.aio import track_async
from aicm_tasks.settings import Settings
from aicm_tasks.tasks import TrackTask
from tests.conftest import TEST_REDIS_URL
from tests.support.limits import limit
from tests.support.pipeline import PrivateRedis
from tests.support.tasks import track_of

SERVICE = "openai::gpt-4o-mini"


def make_track(enabled: bool = True, refresh_ms: int = 60_000) -> TrackTask:
    run = uuid.uuid4().hex[:6]
    return track_of(
        create_app(
            Settings(
                broker_url=TEST_REDIS_URL,
                queue=f"test.limits.{run}",
                key_prefix=f"testlimits-{run}",
                limits_enabled=enabled,
                limits_refresh_ms=refresh_ms,
            )
        )
    )


def store_of(track: TrackTask, client: redis.Redis) -> LimitStore:
    return LimitStore(client, Keys(track.settings.queue, track.settings.key_prefix))


def queued(track: TrackTask, client: redis.Redis) -> int:
    return int(client.llen(track.settings.queue))


def test_a_matching_record_is_published_then_raises_the_sdks_exception(
    real_redis: redis.Redis,
) -> None:
    sdk_exceptions = pytest.importorskip("aicostmanager.client.exceptions")
    track = make_track()
    tripped = limit(SERVICE)
    store_of(track, real_redis).write(DEFAULT_SOURCE, (tripped,), issued_at=1)
    with pytest.raises(sdk_exceptions.UsageLimitExceeded) as raised:
        track.delay(SERVICE, {"input_tokens": 1})
    assert isinstance(raised.value, UsageLimitError)
    assert raised.value.triggered_limits == [tripped]
    assert queued(track, real_redis) == 1  # the SDK's semantics: published, then raised
    track.delay("anthropic::claude-3-haiku", {"input_tokens": 1})  # another service: fine
    assert queued(track, real_redis) == 2


def test_with_limits_off_nothing_is_checked_on_publish(real_redis: redis.Redis) -> None:
    track = make_track(enabled=False)
    store_of(track, real_redis).write(DEFAULT_SOURCE, (limit(SERVICE),), issued_at=1)
    track.delay(SERVICE, {"input_tokens": 1})
    # ...but the explicit pre-flight check still answers.
    assert [x.service_key for x in check_limits(SERVICE, raise_on_match=False, task=track)] == [
        SERVICE
    ]


def test_a_customer_limit_stops_that_customers_records_only(real_redis: redis.Redis) -> None:
    track = make_track()
    store_of(track, real_redis).write(DEFAULT_SOURCE, (limit(SERVICE, "acme"),), issued_at=1)
    track.delay(SERVICE, {"input_tokens": 1}, customer_key="globex")
    with pytest.raises(UsageLimitExceeded):
        track.delay(SERVICE, {"input_tokens": 1}, customer_key="acme")
    with pytest.raises(UsageLimitExceeded):
        track.delay(SERVICE, {"input_tokens": 1})  # no customer: the SDK matches any


def test_limits_of_an_alias_stop_only_records_sent_with_its_key(real_redis: redis.Redis) -> None:
    track = make_track()
    store_of(track, real_redis).write("team-a", (limit(SERVICE),), issued_at=1)
    track.delay(SERVICE, {"input_tokens": 1})
    with pytest.raises(UsageLimitExceeded):
        track.delay(SERVICE, {"input_tokens": 1}, api_key_alias="team-a")
    assert check_limits(SERVICE, raise_on_match=False, task=track) == []
    with pytest.raises(UsageLimitExceeded):
        check_limits(SERVICE, api_key_alias="team-a", task=track)


def test_track_many_publishes_every_record_then_names_every_limit(real_redis: redis.Redis) -> None:
    track = make_track()
    first, second = limit(SERVICE, "acme"), limit(SERVICE, "globex")
    store_of(track, real_redis).write(DEFAULT_SOURCE, (first, second), issued_at=1)
    records = [
        {"service_key": SERVICE, "usage": {"n": n}, "customer_key": c}
        for n, c in enumerate(["acme", "initech", "globex"])
    ]
    with pytest.raises(UsageLimitExceeded) as raised:
        track.many(records)
    assert raised.value.triggered_limits == [first, second]
    assert queued(track, real_redis) == 3


def test_track_async_and_celery_delivery_raise_too(real_redis: redis.Redis) -> None:
    from aicm_tasks.producer.sdk import CeleryDelivery

    track = make_track()
    store_of(track, real_redis).write(DEFAULT_SOURCE, (limit(SERVICE),), issued_at=1)
    with pytest.raises(UsageLimitExceeded):
        asyncio.run(track_async(SERVICE, {"input_tokens": 1}, task=track))
    delivery = CeleryDelivery(task=track)
    payload = {
        "service_key": SERVICE,
        "response_id": "r-sdk",
        "timestamp": "1700000000",
        "payload": {},
    }
    with pytest.raises(UsageLimitExceeded):
        delivery.enqueue(payload)
    assert queued(track, real_redis) == 2


def test_check_limits_raises_or_returns_and_its_async_twin_agrees(real_redis: redis.Redis) -> None:
    track = make_track()
    tripped = limit(SERVICE, "acme")
    store_of(track, real_redis).write(DEFAULT_SOURCE, (tripped,), issued_at=1)
    with pytest.raises(UsageLimitExceeded):
        check_limits(customer_key="acme", task=track)
    assert check_limits(SERVICE, "globex", raise_on_match=False, task=track) == []
    assert asyncio.run(check_limits_async(SERVICE, raise_on_match=False, task=track)) == [tripped]
    with pytest.raises(UsageLimitExceeded):
        asyncio.run(check_limits_async(SERVICE, "acme", task=track))


def test_the_snapshot_is_read_once_per_refresh_interval_not_per_call(
    real_redis: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    track = make_track(refresh_ms=60_000)
    guard = track.producer.limits
    guard._subscriber_client = None  # no nudges: the interval alone
    reads: list[float] = []
    real_read = LimitStore.read

    def counting(self: LimitStore) -> Any:
        reads.append(time.monotonic())
        return real_read(self)

    monkeypatch.setattr(LimitStore, "read", counting)
    for n in range(200):
        track.delay(SERVICE, {"input_tokens": n})
    assert len(reads) == 1
    # Stored after the read: not seen until the snapshot is older than the interval.
    store_of(track, real_redis).write(DEFAULT_SOURCE, (limit(SERVICE),), issued_at=1)
    track.delay(SERVICE, {"input_tokens": 1})
    guard.refresh_s = 0.0
    with pytest.raises(UsageLimitExceeded):
        track.delay(SERVICE, {"input_tokens": 1})


def test_a_change_nudges_the_snapshot_long_before_the_refresh_interval(
    real_redis: redis.Redis,
) -> None:
    track = make_track(refresh_ms=3_600_000)
    assert check_limits(SERVICE, raise_on_match=False, task=track) == []  # starts the subscriber
    store = store_of(track, real_redis)

    # The subscriber may not be subscribed yet: write until a check sees it.
    def seen() -> bool:
        store.write(DEFAULT_SOURCE, (limit(SERVICE, limit_id="x"),), issued_at=time.time())
        return bool(check_limits(SERVICE, raise_on_match=False, task=track))

    wait_until(seen, 30, "the pub/sub nudge to refresh the snapshot", interval_s=0.05)
    store.write(DEFAULT_SOURCE, (), issued_at=time.time() + 1)
    wait_until(
        lambda: not check_limits(SERVICE, raise_on_match=False, task=track),
        30,
        "the cleared set to be seen",
        interval_s=0.05,
    )


def test_a_broker_that_does_not_answer_keeps_the_last_set(real_redis: redis.Redis) -> None:
    track = make_track(refresh_ms=10)
    store_of(track, real_redis).write(DEFAULT_SOURCE, (limit(SERVICE),), issued_at=1)
    assert check_limits(SERVICE, raise_on_match=False, task=track)
    guard = track.producer.limits

    def down() -> Any:
        raise redis.ConnectionError("down")

    guard._store_factory = down
    time.sleep(0.05)  # let the snapshot age past its 10 ms, so the check reads (and fails)
    assert check_limits(SERVICE, raise_on_match=False, task=track)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_reads_and_listens_on_its_own(real_redis: redis.Redis) -> None:
    track = make_track(refresh_ms=3_600_000)
    assert check_limits(SERVICE, raise_on_match=False, task=track) == []  # parent's snapshot
    store = store_of(track, real_redis)
    store.write(DEFAULT_SOURCE, (limit(SERVICE),), issued_at=1)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: a stale snapshot copied from the parent, a fresh read here
        try:
            found = check_limits(SERVICE, raise_on_match=False, task=track)
            os.write(write, b"1" if found else b"0")
        finally:
            os._exit(0)
    os.close(write)
    answer = os.read(read, 1)
    os.waitpid(pid, 0)
    assert answer == b"1"


def test_celery_delivery_deliver_publishes_every_record_before_it_raises(
    real_redis: redis.Redis,
) -> None:
    from aicm_tasks.producer.sdk import CeleryDelivery

    track = make_track()
    tripped = limit(SERVICE)
    store_of(track, real_redis).write(DEFAULT_SOURCE, (tripped,), issued_at=1)
    body = {
        "tracked": [
            {"service_key": s, "response_id": f"r{n}", "timestamp": "1700000000", "payload": {}}
            for n, s in enumerate([SERVICE, "anthropic::claude-3-haiku", SERVICE])
        ]
    }
    with pytest.raises(UsageLimitExceeded) as raised:
        CeleryDelivery(task=track).deliver(body)
    assert raised.value.triggered_limits == [tripped]
    assert queued(track, real_redis) == 3  # the SDK's deliver would have stopped at r0


def test_checks_waiting_on_a_read_of_a_hung_broker_do_not_read_again_one_after_another(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A web request's check must not wait longer than about one publish budget.

    The first check in a process (or the first after a nudge) waits for the
    read under way; it used to then make a read of its own, so with a broker
    that accepts connections but does not answer (paused, swapping) the Nth
    waiting request waited N reads of ``publish_timeout_s`` each.
    """
    server = PrivateRedis(tmp_path / "hung-redis", appendonly=False)
    server.start()
    try:
        run = uuid.uuid4().hex[:6]
        track = track_of(
            create_app(
                Settings(
                    broker_url=server.url,
                    queue=f"test.limits.{run}",
                    key_prefix=f"testlimits-{run}",
                    limits_enabled=True,
                    publish_timeout_s=1.0,
                )
            )
        )
        guard = track.producer.limits
        guard._subscriber_client = None  # the read alone
        reading = threading.Event()
        reads: list[int] = []
        real_read = LimitStore.read

        def counting(self: LimitStore) -> Any:
            reads.append(threading.get_ident())
            reading.set()
            return real_read(self)

        monkeypatch.setattr(LimitStore, "read", counting)
        assert server.process is not None
        server.process.send_signal(signal.SIGSTOP)
        results: list[Any] = []

        def check() -> None:
            results.append(check_limits(SERVICE, raise_on_match=False, task=track))

        first = threading.Thread(target=check)
        first.start()
        assert reading.wait(30)
        waiting = [threading.Thread(target=check) for _ in range(4)]
        for thread in waiting:
            thread.start()
        for thread in [first, *waiting]:
            thread.join(60)
        # One read of the hung broker; the checks waiting on it took its answer
        # (the last set: none here) instead of each trying again.
        assert len(reads) == 1
        assert results == [[]] * 5
    finally:
        if server.process is not None:
            server.process.send_signal(signal.SIGCONT)
        server.stop()


def test_two_first_checks_in_a_forked_child_do_not_swap_the_lock_under_each_other(
    real_redis: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In a new child, two threads may both find the process new before either
    notes its pid. Each then made a fresh lock: the first, reading under the old
    one, released the new one the second held, and the second's release raised
    RuntimeError out of ``check_limits`` (or out of ``track.delay``, after the
    record was published). The interleaving is forced: the hook a fork runs,
    then the second thread's step made while the first one reads."""
    track = make_track()
    guard = track.producer.limits
    guard._subscriber_client = None
    first_reading, first_may_finish = threading.Event(), threading.Event()
    real_read = LimitStore.read

    def read(self: LimitStore) -> Any:
        if threading.current_thread().name == "first":
            first_reading.set()
            assert first_may_finish.wait(30)
        return real_read(self)

    monkeypatch.setattr(LimitStore, "read", read)
    guard._forked()  # what the at-fork hook does in the child
    errors: list[BaseException] = []
    results: list[Any] = []

    def check() -> None:
        try:
            results.append(check_limits(SERVICE, raise_on_match=False, task=track))
        except BaseException as exc:
            errors.append(exc)

    first = threading.Thread(target=check, name="first")
    first.start()
    assert first_reading.wait(30)
    guard._after_fork()  # the second thread, which also found the process new
    second = threading.Thread(target=check, name="second")
    second.start()
    first_may_finish.set()
    for thread in (first, second):
        thread.join(30)
    assert errors == []
    assert results == [[], []]
