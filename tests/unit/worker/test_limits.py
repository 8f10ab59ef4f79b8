"""The worker's side of limits: only verified tokens reach the broker, over fakeredis and Redis."""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

import httpx
import pytest
import redis

from aicm_tasks.broker.keys import Keys
from aicm_tasks.broker.limits import DEFAULT_SOURCE, STALE, UNCHANGED, WRITTEN, LimitStore
from aicm_tasks.devtools.processes import free_port
from aicm_tasks.limits import TriggeredLimit
from aicm_tasks.worker.limits import LimitsKeeper, api_key_id, poll_limits, verify_token
from aicm_tasks.worker.outcomes import VerdictKind, classify_response
from aicm_tasks.worker.transport import TrackTransport
from tests.support.limits import (
    SigningKey,
    forged_object,
    limit,
    token_claims,
    triggered_limits_object,
)

KEYS = Keys("test.limits", "testlimits")


@pytest.fixture(scope="module")
def key() -> SigningKey:
    return SigningKey()


@pytest.fixture
def store(any_redis: redis.Redis) -> LimitStore:
    return LimitStore(any_redis, KEYS)


def test_a_genuine_token_verifies_and_its_limits_reach_the_broker(
    key: SigningKey, store: LimitStore
) -> None:
    tripped = limit("openai::gpt-4o", "acme")
    keeper = LimitsKeeper(store)
    assert keeper.accept(DEFAULT_SOURCE, triggered_limits_object([tripped], key))
    assert store.read() == {DEFAULT_SOURCE: (tripped,)}


@pytest.mark.parametrize("how", ["other-key", "unsigned", "wrong-issuer", "hs256"])
def test_a_forged_token_is_ignored_and_nothing_is_stored(
    key: SigningKey, store: LimitStore, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    keeper = LimitsKeeper(store)
    assert not keeper.accept(DEFAULT_SOURCE, forged_object([limit()], key, how))
    assert store.read() == {}
    assert "does not verify" in caplog.text


def test_tokens_that_are_not_to_be_trusted_do_not_verify(key: SigningKey) -> None:
    claims = token_claims([limit()])
    assert verify_token(key.sign(claims), key.public_pem) is not None
    assert verify_token(key.sign({**claims, "exp": time.time() - 60}), key.public_pem) is None
    assert (
        verify_token(key.sign({k: v for k, v in claims.items() if k != "iss"}), key.public_pem)
        is None
    )
    assert verify_token(key.sign(claims), None) is None
    assert verify_token(key.sign(claims), "not a key") is None
    assert verify_token("not.a.token", key.public_pem) is None


def test_a_later_answer_without_its_public_key_uses_the_last_one_received(
    key: SigningKey, store: LimitStore
) -> None:
    keeper = LimitsKeeper(store)
    assert keeper.accept(DEFAULT_SOURCE, triggered_limits_object([], key))
    later = limit()
    assert keeper.accept(
        DEFAULT_SOURCE, triggered_limits_object([later], key, with_public_key=False)
    )
    assert store.read()[DEFAULT_SOURCE] == (later,)


def test_a_pinned_public_key_refuses_a_token_that_brings_its_own(
    key: SigningKey, store: LimitStore
) -> None:
    intruder = SigningKey()
    keeper = LimitsKeeper(store, pinned_public_key=key.public_pem)
    assert not keeper.accept(DEFAULT_SOURCE, triggered_limits_object([limit()], intruder))
    assert keeper.accept(DEFAULT_SOURCE, triggered_limits_object([limit()], key))


def test_only_the_limits_of_the_key_that_asked_are_kept(key: SigningKey, store: LimitStore) -> None:
    ours, theirs = limit(api_key_id="uuid-1"), limit(api_key_id="uuid-2")
    keeper = LimitsKeeper(store, key_ids={"team-a": api_key_id("secret.uuid-1")})
    keeper.accept("team-a", triggered_limits_object([ours, theirs], key))
    assert store.read() == {"team-a": (ours,)}
    assert api_key_id("no-dot-key") is None


def test_an_empty_set_clears_and_an_older_token_does_not_undo_a_newer(store: LimitStore) -> None:
    first = limit()
    assert store.write(DEFAULT_SOURCE, (first,), issued_at=10.0) == WRITTEN
    assert store.write(DEFAULT_SOURCE, (first,), issued_at=11.0) == UNCHANGED
    assert store.write(DEFAULT_SOURCE, (), issued_at=5.0) == STALE
    assert store.read() == {DEFAULT_SOURCE: (first,)}
    assert store.write(DEFAULT_SOURCE, (), issued_at=12.0) == WRITTEN
    assert store.read() == {DEFAULT_SOURCE: ()}


def test_a_change_is_announced_on_the_channel(real_redis: redis.Redis) -> None:
    store = LimitStore(real_redis, KEYS)
    pubsub = real_redis.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(KEYS.limits_changed)
    store.write("team-a", (limit(),), issued_at=1.0)
    deadline = time.monotonic() + 10
    message = None
    while message is None and time.monotonic() < deadline:
        message = pubsub.get_message(timeout=1.0)
    pubsub.close()
    assert message is not None and message["data"] == b"team-a"


def test_an_unreadable_entry_is_skipped_not_fatal(real_redis: redis.Redis) -> None:
    real_redis.hset(KEYS.limits, "team-b", "{not json")
    store = LimitStore(real_redis, KEYS)
    store.write("team-a", (limit(),), issued_at=1.0)
    assert set(store.read()) == {"team-a"}


# -- the transport hands answers' limits over ------------------------------------------


def answer(data: dict[str, Any] | None) -> bytes:
    body: dict[str, Any] = {"results": [{"response_id": "r1", "status": "queued"}]}
    if data is not None:
        body["triggered_limits"] = data
    return json.dumps(body).encode()


def test_the_answer_carries_its_triggered_limits_object(key: SigningKey) -> None:
    data = triggered_limits_object([limit()], key)
    verdict = classify_response(200, {}, answer(data))
    assert verdict.kind is VerdictKind.RESULTS and verdict.triggered_limits == data
    assert classify_response(200, {}, answer({})).triggered_limits is None
    assert classify_response(200, {}, answer(None)).triggered_limits is None


def test_the_transport_reports_limits_by_the_alias_that_sent_and_polls_them(
    key: SigningKey,
) -> None:
    data = triggered_limits_object([limit()], key)
    seen: list[tuple[str, Any]] = []
    asked: list[str] = []

    def server(request: httpx.Request) -> httpx.Response:
        asked.append(f"{request.method} {request.url.path} {request.headers['authorization']}")
        if request.method == "GET":
            return httpx.Response(200, json={"triggered_limits": data})
        return httpx.Response(200, content=answer(data))

    transport = TrackTransport(
        "http://x.test/api/v1/track",
        "default-key",
        keys={"team-a": "a-key"},
        transport=httpx.MockTransport(server),
        on_limits=lambda source, got: seen.append((source, got)),
    )
    transport.post(b"{}")
    transport.sender("team-a")(b"{}")
    assert seen == [(DEFAULT_SOURCE, data), ("team-a", data)]
    assert transport.sources == [DEFAULT_SOURCE, "team-a"]
    assert transport.get_triggered_limits("team-a") == data
    assert asked[-1] == "GET /api/v1/triggered-limits Bearer a-key"
    transport.close()


def test_a_fault_in_taking_limits_does_not_undo_a_delivered_batch(key: SigningKey) -> None:
    def broken(source: str, got: Any) -> None:
        raise RuntimeError("bug")

    transport = TrackTransport(
        "http://x.test/api/v1/track",
        "k",
        transport=httpx.MockTransport(
            lambda r: httpx.Response(200, content=answer(triggered_limits_object([], key)))
        ),
        on_limits=broken,
    )
    assert transport.post(b"{}").kind is VerdictKind.RESULTS
    transport.close()


def test_the_poll_asks_every_source_at_once_then_stops_when_told(
    key: SigningKey, store: LimitStore
) -> None:
    keeper = LimitsKeeper(store)
    asked: list[str] = []
    stop = threading.Event()

    def fetch(source: str) -> dict[str, str] | None:
        asked.append(source)
        stop.set()
        return triggered_limits_object([limit(limit_id=source)], key)

    poll_limits(keeper, fetch, [DEFAULT_SOURCE, "team-a"], stop, interval_s=60)
    assert asked == [DEFAULT_SOURCE, "team-a"]
    assert {s: [x.limit_id for x in v] for s, v in store.read().items()} == {
        DEFAULT_SOURCE: [DEFAULT_SOURCE],
        "team-a": ["team-a"],
    }


def test_limits_are_triggered_limit_objects(store: LimitStore) -> None:
    store.write("a", (limit(),), issued_at=0)
    assert all(isinstance(item, TriggeredLimit) for item in store.read()["a"])


@pytest.mark.parametrize("server_ahead_s", [2, 90])
def test_a_token_from_a_server_whose_clock_is_ahead_still_verifies(
    key: SigningKey, store: LimitStore, server_ahead_s: int
) -> None:
    """``iat`` only orders sets (issued at on the server's clock); PyJWT refused a
    token "not yet valid (iat)" when the server's clock ran ahead of the worker's
    by as little as a second, and the tripped limit was dropped: producers went on."""
    tripped = limit("openai::gpt-4o", "acme")
    claims = {**token_claims([tripped]), "iat": int(time.time()) + server_ahead_s}
    data = {"encrypted_payload": key.sign(claims), "public_key": key.public_pem}
    assert LimitsKeeper(store).accept(DEFAULT_SOURCE, data)
    assert store.read() == {DEFAULT_SOURCE: (tripped,)}


def test_a_token_expired_a_moment_ago_by_a_server_clock_behind_still_verifies(
    key: SigningKey,
) -> None:
    claims = {**token_claims([limit()]), "exp": int(time.time()) - 5}
    assert verify_token(key.sign(claims), key.public_pem) is not None
    claims = {**token_claims([limit()]), "exp": int(time.time()) - 3600}
    assert verify_token(key.sign(claims), key.public_pem) is None


def test_a_set_lost_from_the_broker_is_written_again_by_the_next_answer_that_carries_it(
    key: SigningKey, real_redis: redis.Redis
) -> None:
    """The server caches its token while the set is unchanged, so every answer
    carries the same token; a worker skipped a token it had stored once, so a
    limits hash evicted (or lost in a Redis restart) stayed empty, and every
    producer went on past a tripped limit, until the set changed."""
    store = LimitStore(real_redis, KEYS)
    # 0: every answer writes again (by default, one a second at most).
    keeper = LimitsKeeper(store, rewrite_every_s=0.0)
    tripped = limit("openai::gpt-4o", "acme")
    data = triggered_limits_object([tripped], key)
    assert keeper.accept(DEFAULT_SOURCE, data)
    real_redis.delete(KEYS.limits)  # evicted
    keeper.accept(DEFAULT_SOURCE, data)  # the next answer: the same cached token
    assert store.read() == {DEFAULT_SOURCE: (tripped,)}


def test_a_burst_of_answers_with_one_token_writes_it_once_per_interval(
    key: SigningKey, real_redis: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = LimitStore(real_redis, KEYS)
    writes: list[str] = []
    real_write = LimitStore.write

    def counting(self: LimitStore, source: str, *args: Any, **kwargs: Any) -> int:
        writes.append(source)
        return real_write(self, source, *args, **kwargs)

    monkeypatch.setattr(LimitStore, "write", counting)
    keeper = LimitsKeeper(store, rewrite_every_s=3600.0)
    data = triggered_limits_object([limit()], key)
    for _ in range(50):
        keeper.accept(DEFAULT_SOURCE, data)
    assert writes == [DEFAULT_SOURCE]


def test_two_workers_answers_signed_in_one_second_settle_on_the_set_answers_still_carry(
    key: SigningKey, real_redis: redis.Redis
) -> None:
    """Two limits tripped within one second give two sets with one ``iat`` (whole
    seconds): one worker stored the later set, another then the earlier (equal
    ``iat`` does not refuse it). The answers that follow carry the later token
    (cached); its worker skipped it as stored, so the second limit stayed lost."""
    store = LimitStore(real_redis, KEYS)
    first, second = limit("openai::gpt-4o"), limit("openai::gpt-4o-mini")
    iat = int(time.time())
    earlier = {
        "encrypted_payload": key.sign({**token_claims([first]), "iat": iat}),
        "public_key": key.public_pem,
    }
    later = {
        "encrypted_payload": key.sign({**token_claims([first, second]), "iat": iat}),
        "public_key": key.public_pem,
    }
    worker_a = LimitsKeeper(store, rewrite_every_s=0.0)
    worker_b = LimitsKeeper(store, rewrite_every_s=0.0)
    assert worker_a.accept(DEFAULT_SOURCE, later)
    worker_b.accept(DEFAULT_SOURCE, earlier)  # crossed: written over the later
    worker_a.accept(DEFAULT_SOURCE, later)  # the next answer to worker A
    assert set(store.read()[DEFAULT_SOURCE]) == {first, second}


@pytest.mark.parametrize("iat", [float("inf"), float("nan"), "soon", True])
def test_a_token_whose_iat_is_not_a_time_does_not_freeze_the_stored_set(
    key: SigningKey, store: LimitStore, iat: Any
) -> None:
    """``iat`` orders sets; it is no longer checked against the clock (a server
    ahead of the worker), so ``Infinity`` (JSON PyJWT reads) reached the store's
    ordering: every later set was older, and the limits stayed as they were for good."""
    odd = {
        "encrypted_payload": key.sign({**token_claims([limit()]), "iat": iat}),
        "public_key": key.public_pem,
    }
    LimitsKeeper(store).accept(DEFAULT_SOURCE, odd)
    cleared = triggered_limits_object([], key)
    LimitsKeeper(store).accept(DEFAULT_SOURCE, cleared)
    assert store.read() == {DEFAULT_SOURCE: ()}


def test_a_failed_poll_logs_the_url_without_the_password_an_api_base_may_carry(
    caplog: pytest.LogCaptureFixture,
) -> None:
    transport = TrackTransport(
        f"http://admin:S3CRET-PW@127.0.0.1:{free_port()}/api/v1/track", "default-key"
    )
    with caplog.at_level(logging.DEBUG, logger="aicm_tasks.worker.transport"):
        assert transport.get_triggered_limits(DEFAULT_SOURCE) is None
    transport.close()
    assert "triggered-limits failed" in caplog.text
    assert "S3CRET-PW" not in caplog.text


@pytest.mark.parametrize(
    "entry",
    [
        "[" * 100_000 + "]" * 100_000,  # RecursionError from json.loads
        '[{"limit_id": "x", "amount": 1' + "0" * 400 + "}]",  # OverflowError from float()
    ],
    ids=["nested", "huge-amount"],
)
def test_an_entry_that_breaks_the_reader_is_skipped_not_fatal(
    real_redis: redis.Redis, entry: str
) -> None:
    """Every producer reads this hash on its hot path (and ``track.delay`` reads it
    after publishing): an entry that raised RecursionError or OverflowError, not
    ValueError, stopped every producer instead of being left out."""
    real_redis.hset(KEYS.limits, "team-b", entry)
    real_redis.hset(KEYS.limits, b"\xff\xfe", entry)  # a field name that is not UTF-8
    store = LimitStore(real_redis, KEYS)
    store.write("team-a", (limit(),), issued_at=1.0)
    assert set(store.read()) == {"team-a"}


def test_a_token_with_an_amount_past_a_float_is_ignored_not_raised(
    key: SigningKey, store: LimitStore
) -> None:
    claims = {**token_claims([]), "triggered_limits": [{"limit_id": "x", "amount": 10**400}]}
    data = {"encrypted_payload": key.sign(claims), "public_key": key.public_pem}
    assert LimitsKeeper(store).accept(DEFAULT_SOURCE, data) is False
