"""Pure classification: a ``/track`` answer (or failure) -> what happens to each record.

Nothing here does I/O. The rules are the contract's tables
(``docs/how-it-works.md`` repeats them):

* a 200 with the contract's shape is read record by record: ``queued`` and
  ``completed`` are delivered, ``service_key_unknown`` and ``error`` are dead
  letters, a record with no result (or a status this version does not know)
  is retried;
* network errors, timeouts, 5xx, 429, other unexpected statuses and a 200 whose
  body is not the contract's shape are transient: the whole batch is retried;
* 401/403 mean the key is wrong: records are kept, not burnt;
* 400/413/422 refuse the request: the batch is split to isolate the poison;
  so is a 5xx but 503 for records that failed before (a server that fails on
  one record), see :func:`aicm_tasks.worker.attempts.attempt`.

A request that got no answer at all is classified by the transport
(:func:`aicm_tasks.worker.transport.classify_exception`), the one module that
knows httpx: this one stays free of it, and so does the planning that uses it.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aicm_tasks.contract import STATUS_COMPLETED, STATUS_QUEUED, STATUSES
from aicm_tasks.worker.retry import parse_retry_after

#: Statuses meaning the record was accepted.
DELIVERED_STATUSES = frozenset({STATUS_QUEUED, STATUS_COMPLETED})
#: Whole-request statuses that mean some record in the request is poison.
REFUSED_HTTP = frozenset({400, 413, 422})
UNAUTHORIZED_HTTP = frozenset({401, 403})
#: Longest excerpt of a response body kept for logs and dead letters.
BODY_EXCERPT_CHARS = 500


class Fate(str, enum.Enum):
    """Where a record goes after one delivery attempt."""

    DELIVERED = "delivered"
    RETRY = "retry"
    DEAD_LETTER = "dead_letter"


class Reason(str, enum.Enum):
    """Why a record is in the dead-letter store."""

    SERVICE_KEY_UNKNOWN = "service_key_unknown"
    ERROR = "error"
    REJECTED = "rejected"
    RETRIES_EXHAUSTED = "retries_exhausted"
    MALFORMED = "malformed"
    #: The record names an API-key alias this worker holds no key for.
    UNKNOWN_API_KEY_ALIAS = "unknown_api_key_alias"
    #: RabbitMQ returned the record to its queue more often than the delivery
    #: limit (a worker killed by it each time) and parked it; replayable.
    DELIVERY_LIMIT = "delivery_limit"


class VerdictKind(str, enum.Enum):
    """How the request as a whole went."""

    RESULTS = "results"
    TRANSIENT = "transient"
    UNAUTHORIZED = "unauthorized"
    REFUSED = "refused"


@dataclass(frozen=True, slots=True)
class RecordResult:
    """One entry of the server's ``results``."""

    status: str
    errors: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class BatchVerdict:
    """The classified answer to one POST: its kind, per-record results, and why."""

    kind: VerdictKind
    detail: str
    http_status: int | None = None
    retry_after_s: float | None = None
    results: Mapping[str, RecordResult] = field(default_factory=dict)
    #: The answer's ``triggered_limits`` object (the SDK's format, not yet
    #: verified: :mod:`aicm_tasks.worker.limits` does that); None when absent or empty.
    triggered_limits: Mapping[str, Any] | None = None


#: How a batch body is sent: one POST, its answer classified. The transport
#: (:mod:`aicm_tasks.worker.transport`) makes these; tests pass plain functions.
Post = Callable[[bytes], BatchVerdict]


def classify_response(status: int, headers: Mapping[str, str], body: bytes) -> BatchVerdict:
    """Classify one HTTP answer to ``POST /track``."""
    if status == 200:
        document = _load(body)
        results = _results(document)
        if results is None:
            return BatchVerdict(
                VerdictKind.TRANSIENT,
                f"200 with a body not of the contract's shape: {excerpt(body)}",
                200,
            )
        limits = document.get("triggered_limits")  # a dict, or _results had said None
        return BatchVerdict(
            VerdictKind.RESULTS,
            "200",
            200,
            results=results,
            triggered_limits=limits if isinstance(limits, dict) and limits else None,
        )
    if status in UNAUTHORIZED_HTTP:
        return BatchVerdict(VerdictKind.UNAUTHORIZED, f"HTTP {status}: {excerpt(body)}", status)
    if status in REFUSED_HTTP:
        return BatchVerdict(VerdictKind.REFUSED, f"HTTP {status}: {excerpt(body)}", status)
    retry_after = parse_retry_after(headers.get("retry-after")) if status in (429, 503) else None
    return BatchVerdict(
        VerdictKind.TRANSIENT, f"HTTP {status}: {excerpt(body)}", status, retry_after_s=retry_after
    )


#: Whole-request statuses that may be one record's fault (a server that fails
#: on it): the batch is split to find it (see :func:`suspects_a_record`). 503
#: says the server is unavailable, whoever asks, so it is not among them.
NOT_A_RECORDS_FAULT_HTTP = frozenset({503})


def suspects_a_record(verdict: BatchVerdict) -> bool:
    """Whether a failed request may have failed because of one of its records.

    True for a 5xx other than 503: a server that crashes on one record answers
    500 to every request that holds it, so the batch is split to find it.
    """
    status = verdict.http_status
    return (
        verdict.kind is VerdictKind.TRANSIENT
        and status is not None
        and 500 <= status < 600
        and status not in NOT_A_RECORDS_FAULT_HTTP
    )


def parse_results(body: bytes) -> dict[str, RecordResult] | None:
    """Read ``{"results": [{"response_id", "status", "errors"?}, ...]}``; None if malformed."""
    return _results(_load(body))


def _load(body: bytes) -> Any:
    """The JSON document of a body; None when it is not JSON."""
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        # RecursionError: a body nested past the parser's limit (about 1,000
        # levels on CPython 3.11, from a 2 kB answer) is garbage like any other,
        # not an exception that would end the attempt (and its splits) early.
        # UnicodeDecodeError (not UTF-8) is a ValueError.
        return None


def _results(document: Any) -> dict[str, RecordResult] | None:
    if not isinstance(document, dict) or not isinstance(document.get("results"), list):
        return None
    results: dict[str, RecordResult] = {}
    for item in document["results"]:
        if not isinstance(item, dict):
            return None
        response_id, status = item.get("response_id"), item.get("status")
        if not isinstance(response_id, str) or not isinstance(status, str):
            return None
        errors = item.get("errors")
        if not errors:
            # One shared object per status: most answers are all "queued".
            results[response_id] = _PLAIN_RESULTS.get(status) or RecordResult(status)
            continue
        if not isinstance(errors, list | tuple):
            errors = (errors,)
        results[response_id] = RecordResult(status, tuple(str(e) for e in errors))
    return results


_PLAIN_RESULTS = {status: RecordResult(status) for status in STATUSES}


def record_fate(result: RecordResult | None) -> tuple[Fate, Reason | None, str]:
    """The fate of one record from its result in a 200 answer (None: no result).

    Returns ``(fate, dead-letter reason or None, detail)``.
    """
    if result is None:
        return Fate.RETRY, None, "no result for this record in the response"
    if result.status in DELIVERED_STATUSES:
        return Fate.DELIVERED, None, result.status
    if result.status == Reason.SERVICE_KEY_UNKNOWN.value:
        return Fate.DEAD_LETTER, Reason.SERVICE_KEY_UNKNOWN, result.status
    if result.status == Reason.ERROR.value:
        return Fate.DEAD_LETTER, Reason.ERROR, result.status
    # A status this version does not know: keep the record and try again later
    # rather than guess; it dead-letters as retries_exhausted if it persists.
    return Fate.RETRY, None, f"unknown status {result.status!r}"


def excerpt(body: bytes) -> str:
    """A short, printable excerpt of a response body for logs and dead letters."""
    text = body[: BODY_EXCERPT_CHARS * 2].decode("utf-8", "replace")
    return " ".join(text.split())[:BODY_EXCERPT_CHARS]
