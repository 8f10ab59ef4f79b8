"""TrackTransport over ``httpx.MockTransport``: what it sends, and the verdict of each answer.

No sockets: the mock handler sees the request exactly as httpx would send it
and answers with whatever a test needs, a stream dripped chunk by chunk
included. The same transport against the real local server: tests/integration.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from types import SimpleNamespace

import httpx
import pytest

from aicm_tasks.worker import transport as transport_module
from aicm_tasks.worker.outcomes import RecordResult, VerdictKind
from aicm_tasks.worker.retry import MAX_RETRY_AFTER_S
from aicm_tasks.worker.transport import TrackTransport

URL = "https://track.example/api/v1/track"
KEY = "sk-default-9f3c1d"
TEAM_KEY = "sk-team-a-77e0b2"
BODY = json.dumps({"tracked": [{"response_id": "r1"}]}).encode()

Handler = Callable[[httpx.Request], httpx.Response]


def make(handler: Handler, **options: object) -> TrackTransport:
    return TrackTransport(
        URL,
        KEY,
        keys={"team-a": TEAM_KEY},
        transport=httpx.MockTransport(handler),
        **options,  # type: ignore[arg-type]
    )


def answer(status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> Handler:
    return lambda request: httpx.Response(status, content=body, headers=headers)


def results(*pairs: tuple[str, str]) -> bytes:
    return json.dumps(
        {"results": [{"response_id": rid, "status": status} for rid, status in pairs]}
    ).encode()


# -- what is sent ---------------------------------------------------------------------


def test_a_post_carries_the_default_key_as_bearer_and_the_body_as_json() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=results(("r1", "queued")))

    verdict = make(handler).post(BODY)
    (request,) = seen
    assert request.method == "POST"
    assert str(request.url) == URL
    assert request.headers["Authorization"] == f"Bearer {KEY}"
    assert request.headers["Content-Type"] == "application/json"
    assert request.content == BODY
    assert verdict.kind is VerdictKind.RESULTS
    assert verdict.results == {"r1": RecordResult("queued")}


def test_an_alias_sender_uses_that_aliases_key_on_the_same_client() -> None:
    keys: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        keys.append(request.headers["Authorization"])
        return httpx.Response(200, content=results(("r1", "queued")))

    transport = make(handler)
    transport.sender("team-a")(BODY)
    transport.post(BODY)
    assert keys == [f"Bearer {TEAM_KEY}", f"Bearer {KEY}"]
    assert transport.aliases == ["team-a"]


def test_without_a_default_key_there_is_no_poster_and_no_authorization_header() -> None:
    headers: list[httpx.Headers] = []

    def handler(request: httpx.Request) -> httpx.Response:
        headers.append(request.headers)
        return httpx.Response(200, content=results(("r1", "queued")))

    transport = TrackTransport(
        URL, None, keys={"team-a": TEAM_KEY}, transport=httpx.MockTransport(handler)
    )
    assert transport.poster() is None
    transport.post(BODY)
    assert "Authorization" not in headers[0]
    assert make(handler).poster() is not None


# -- each status class -> a verdict ------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "body", "kind"),
    [
        (200, results(("r1", "queued")), VerdictKind.RESULTS),
        (200, b"<html>maintenance</html>", VerdictKind.TRANSIENT),
        (200, b'{"results": "nope"}', VerdictKind.TRANSIENT),
        (201, b"", VerdictKind.TRANSIENT),
        (301, b"", VerdictKind.TRANSIENT),
        (400, b'{"detail": "bad"}', VerdictKind.REFUSED),
        (401, b"", VerdictKind.UNAUTHORIZED),
        (403, b"", VerdictKind.UNAUTHORIZED),
        (404, b"", VerdictKind.TRANSIENT),
        (413, b"", VerdictKind.REFUSED),
        (422, b"", VerdictKind.REFUSED),
        (429, b"", VerdictKind.TRANSIENT),
        (500, b"oops", VerdictKind.TRANSIENT),
        (502, b"", VerdictKind.TRANSIENT),
        (503, b"", VerdictKind.TRANSIENT),
    ],
)
def test_each_answer_gets_the_verdict_of_its_status(
    status: int, body: bytes, kind: VerdictKind
) -> None:
    verdict = make(answer(status, body)).post(BODY)
    assert verdict.kind is kind
    assert verdict.http_status == status


def test_a_refusal_keeps_an_excerpt_of_the_servers_words() -> None:
    verdict = make(answer(422, b'{"detail": "payload.input_tokens must be >= 0"}')).post(BODY)
    assert verdict.detail.startswith("HTTP 422: ")
    assert "input_tokens must be >= 0" in verdict.detail


# -- Retry-After -----------------------------------------------------------------------------


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_in_seconds_is_read_on_429_and_503(status: int) -> None:
    verdict = make(answer(status, headers={"Retry-After": "17"})).post(BODY)
    assert verdict.retry_after_s == 17.0


def test_retry_after_as_an_http_date_is_read_as_seconds_from_now() -> None:
    when = datetime.now(timezone.utc) + timedelta(hours=1)
    verdict = make(answer(429, headers={"Retry-After": format_datetime(when, usegmt=True)})).post(
        BODY
    )
    assert verdict.retry_after_s is not None
    # An hour ahead, give or take the clock ticking between the two lines.
    assert 3000 < verdict.retry_after_s <= 3600


@pytest.mark.parametrize(
    ("header", "expected"),
    [("soon", None), ("", None), ("-5", 0.0), ("NaN", None), ("99999999", MAX_RETRY_AFTER_S)],
)
def test_a_retry_after_that_is_unreadable_or_out_of_range_is_dropped_or_clamped(
    header: str, expected: float | None
) -> None:
    verdict = make(answer(503, headers={"Retry-After": header})).post(BODY)
    assert verdict.kind is VerdictKind.TRANSIENT
    assert verdict.retry_after_s == expected


@pytest.mark.parametrize("status", [500, 502, 200])
def test_retry_after_is_ignored_on_other_statuses(status: int) -> None:
    body = results(("r1", "queued")) if status == 200 else b""
    verdict = make(answer(status, body, headers={"Retry-After": "17"})).post(BODY)
    assert verdict.retry_after_s is None


# -- no answer ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "prefix"),
    [
        (httpx.ConnectError("connection refused"), "network: ConnectError"),
        (httpx.RemoteProtocolError("server disconnected"), "network: RemoteProtocolError"),
        (httpx.ReadError("reset by peer"), "network: ReadError"),
        (httpx.ConnectTimeout("connect"), "timeout: ConnectTimeout"),
        (httpx.ReadTimeout("read"), "timeout: ReadTimeout"),
        (httpx.PoolTimeout("pool"), "timeout: PoolTimeout"),
    ],
)
def test_network_errors_and_timeouts_are_transient_and_never_raise(
    error: httpx.HTTPError, prefix: str
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise error

    verdict = make(handler).post(BODY)
    assert verdict.kind is VerdictKind.TRANSIENT
    assert verdict.http_status is None
    assert verdict.detail.startswith(prefix)


def test_an_error_while_the_answer_streams_in_is_transient() -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"results": ['
        raise httpx.ReadError("connection reset mid-answer")

    verdict = make(lambda request: httpx.Response(200, content=chunks())).post(BODY)
    assert verdict.kind is VerdictKind.TRANSIENT
    assert verdict.detail.startswith("network: ReadError")


# -- answers that never end ---------------------------------------------------------------------


def test_an_answer_past_the_size_cap_is_abandoned_as_transient(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(transport_module, "MAX_ANSWER_BYTES", 1000)
    sent: list[int] = []

    def endless() -> Iterator[bytes]:
        for n in itertools.count():
            sent.append(n)
            yield b"x" * 100

    verdict = make(lambda request: httpx.Response(200, content=endless())).post(BODY)
    assert verdict.kind is VerdictKind.TRANSIENT
    assert verdict.http_status == 200
    assert verdict.detail == "timeout: HTTP 200 answer more than 1000 bytes"
    # Read up to the cap and no further: 11 chunks of 100 bytes pass 1000.
    assert len(sent) == 11


def test_an_answer_of_exactly_the_size_cap_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    body = results(("r1", "queued"))
    monkeypatch.setattr(transport_module, "MAX_ANSWER_BYTES", len(body))
    verdict = make(answer(200, body)).post(BODY)
    assert verdict.kind is VerdictKind.RESULTS


def test_an_answer_dripped_past_the_whole_answer_deadline_is_abandoned(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A fake monotonic clock that moves 1 s per reading: each chunk arrives
    # well within any per-read timeout, yet the whole answer takes longer than
    # timeout_s. No real waiting, so no timing in the test.
    ticks = itertools.count()
    monkeypatch.setattr(transport_module, "time", SimpleNamespace(monotonic=lambda: next(ticks)))
    read: list[int] = []

    def drip() -> Iterator[bytes]:
        for n in range(100):
            read.append(n)
            yield b" "

    verdict = make(lambda request: httpx.Response(200, content=drip()), timeout_s=5).post(BODY)
    assert verdict.kind is VerdictKind.TRANSIENT
    assert verdict.detail == "timeout: HTTP 200 answer not complete in 5s"
    assert len(read) < 100


def test_an_answer_complete_within_the_deadline_is_classified(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ticks = itertools.count()
    monkeypatch.setattr(transport_module, "time", SimpleNamespace(monotonic=lambda: next(ticks)))
    body = results(("r1", "completed"))

    def in_three_chunks() -> Iterator[bytes]:
        yield body[:5]
        yield body[5:10]
        yield body[10:]

    verdict = make(
        lambda request: httpx.Response(200, content=in_three_chunks()), timeout_s=5
    ).post(BODY)
    assert verdict.kind is VerdictKind.RESULTS
    assert verdict.results == {"r1": RecordResult("completed")}


# -- the key stays secret ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "handler",
    [
        answer(200, results(("r1", "queued"))),
        answer(200, b"not json"),
        answer(401, b'{"detail": "invalid token"}'),
        answer(422, b'{"detail": "bad record"}'),
        answer(503, headers={"Retry-After": "3"}),
        lambda request: (_ for _ in ()).throw(httpx.ConnectError("refused", request=request)),
        lambda request: (_ for _ in ()).throw(httpx.ReadTimeout("slow", request=request)),
    ],
    ids=["200", "200-garbage", "401", "422", "503", "connect-error", "read-timeout"],
)
def test_no_key_appears_in_a_verdict_a_log_line_or_the_repr(
    handler: Handler, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # httpx and httpcore log requests at DEBUG
    transport = make(handler)
    verdicts = [transport.post(BODY), transport.sender("team-a")(BODY)]
    shown = " ".join([repr(transport), caplog.text] + [f"{v.detail} {v!r}" for v in verdicts])
    assert KEY not in shown
    assert TEAM_KEY not in shown
    assert "Bearer" not in shown


def test_close_closes_the_pooled_client() -> None:
    transport = make(answer(200, results(("r1", "queued"))))
    transport.close()
    assert transport._client.is_closed
