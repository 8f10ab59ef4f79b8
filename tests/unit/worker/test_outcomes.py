from __future__ import annotations

import json

import httpx
import pytest

from aicm_tasks.worker.outcomes import (
    Fate,
    Reason,
    RecordResult,
    VerdictKind,
    classify_response,
    record_fate,
)
from aicm_tasks.worker.transport import classify_exception

GOOD = json.dumps({"results": [{"response_id": "r1", "status": "queued"}]}).encode()


@pytest.mark.parametrize(
    ("status", "headers", "body", "kind", "retry_after"),
    [
        (200, {}, GOOD, VerdictKind.RESULTS, None),
        (200, {}, b"<html>oops</html>", VerdictKind.TRANSIENT, None),
        (200, {}, b'{"results": "nope"}', VerdictKind.TRANSIENT, None),
        (200, {}, b'{"results": [{"status": "queued"}]}', VerdictKind.TRANSIENT, None),
        (200, {}, b"[]", VerdictKind.TRANSIENT, None),
        (200, {}, b'{"results":' + b"[" * 100_000, VerdictKind.TRANSIENT, None),
        (200, {}, b"\xff\xfe", VerdictKind.TRANSIENT, None),
        (500, {}, b"boom", VerdictKind.TRANSIENT, None),
        (502, {}, b"", VerdictKind.TRANSIENT, None),
        (503, {"retry-after": "7"}, b"", VerdictKind.TRANSIENT, 7.0),
        (429, {"retry-after": "30"}, b"", VerdictKind.TRANSIENT, 30.0),
        (429, {}, b"", VerdictKind.TRANSIENT, None),
        (429, {"retry-after": "soon"}, b"", VerdictKind.TRANSIENT, None),
        (401, {}, b"bad key", VerdictKind.UNAUTHORIZED, None),
        (403, {}, b"", VerdictKind.UNAUTHORIZED, None),
        (400, {}, b"bad", VerdictKind.REFUSED, None),
        (413, {}, b"too big", VerdictKind.REFUSED, None),
        (422, {}, b"invalid", VerdictKind.REFUSED, None),
        (404, {}, b"not found", VerdictKind.TRANSIENT, None),
        (302, {}, b"", VerdictKind.TRANSIENT, None),
    ],
)
def test_whole_request_answers_are_classified_as_the_contract_says(
    status: int, headers: dict, body: bytes, kind: VerdictKind, retry_after: float | None
) -> None:
    verdict = classify_response(status, headers, body)
    assert verdict.kind is kind
    assert verdict.retry_after_s == retry_after
    assert verdict.http_status == status


@pytest.mark.parametrize(
    "exc",
    [
        httpx.ConnectError("refused"),
        httpx.ReadTimeout("slow"),
        httpx.RemoteProtocolError("reset"),
        httpx.ConnectTimeout("dns"),
    ],
)
def test_network_failures_are_transient(exc: Exception) -> None:
    verdict = classify_exception(exc)
    assert verdict.kind is VerdictKind.TRANSIENT
    assert verdict.http_status is None


@pytest.mark.parametrize(
    ("result", "fate", "reason"),
    [
        (RecordResult("queued"), Fate.DELIVERED, None),
        (RecordResult("completed"), Fate.DELIVERED, None),
        (
            RecordResult("service_key_unknown", ("not recognized",)),
            Fate.DEAD_LETTER,
            Reason.SERVICE_KEY_UNKNOWN,
        ),
        (RecordResult("error", ("payload: bad",)), Fate.DEAD_LETTER, Reason.ERROR),
        (RecordResult("something_new"), Fate.RETRY, None),
        (None, Fate.RETRY, None),
    ],
)
def test_each_record_result_has_one_fate(
    result: RecordResult | None, fate: Fate, reason: Reason | None
) -> None:
    assert record_fate(result)[:2] == (fate, reason)


def test_results_keep_the_servers_errors() -> None:
    body = json.dumps(
        {
            "results": [
                {
                    "response_id": "r1",
                    "status": "error",
                    "errors": ["payload: input_tokens must be an integer"],
                }
            ]
        }
    ).encode()
    verdict = classify_response(200, {}, body)
    assert verdict.results["r1"].errors == ("payload: input_tokens must be an integer",)
