"""Settle a delivered batch: every record's fate as the writes the broker applies.

:func:`plan` turns the outcomes of an attempt (:mod:`aicm_tasks.worker.attempts`)
into the :class:`~aicm_tasks.broker.resolution.Resolution` that the broker
applies atomically, and a :class:`Summary` for logs, stats and events; a retry
past the policy's limit becomes a dead letter. Plain functions: no Celery, no
Redis, no httpx (an import-linter contract keeps it so).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aicm_tasks.broker.keys import (
    LAST_DELIVERED_AT,
    LAST_UNAUTHORIZED_AT,
    RATE_DEAD_LETTERED,
    RATE_DELIVERED,
    RATE_REQUESTS,
    RATE_RETRIED,
    RATE_TRANSPORT_FAILED,
    RATE_UNAUTHORIZED,
    RETRYING_SINCE,
    UNAUTHORIZED_SINCE,
    dead_lettered_field,
)
from aicm_tasks.broker.messages import Item, decode, encode, malformed_id, record_of
from aicm_tasks.broker.resolution import Resolution

# Re-exported: the service, tests and docs name the attempt from here too.
from aicm_tasks.worker.attempts import Attempt as Attempt
from aicm_tasks.worker.attempts import Outcome
from aicm_tasks.worker.attempts import attempt as attempt
from aicm_tasks.worker.outcomes import Fate, Reason
from aicm_tasks.worker.outcomes import Post as Post
from aicm_tasks.worker.retry import BackoffPolicy


@dataclass(frozen=True, slots=True)
class Summary:
    """Counts for one resolved batch, for logs, stats and task events."""

    delivered: int
    retried: int
    dead_lettered: dict[str, int]
    requests: int
    #: response_ids of the records scheduled for retry, and of the dead letters.
    retried_ids: tuple[str, ...] = ()
    dead_lettered_ids: tuple[str, ...] = ()
    #: Why records were retried (the first failure's detail), for the log line.
    retry_detail: str = ""
    #: The server refused the API key (401/403): records were kept, not counted.
    unauthorized: bool = False


def plan(
    outcomes: Sequence[Outcome],
    policy: BackoffPolicy,
    *,
    auth_retry_interval_s: float,
    now: float | None = None,
    delivered: int = 0,
    requests: int = 0,
    transport_failed: int = 0,
    unauthorized: int = 0,
) -> tuple[Resolution, Summary]:
    """Turn outcomes into the writes that settle the batch, and count them.

    ``delivered`` counts delivered records not among ``outcomes``, ``requests``
    the POSTs the attempt took, ``transport_failed`` and ``unauthorized`` how
    many of them got no readable answer or a 401/403 (all from an
    :class:`~aicm_tasks.worker.attempts.Attempt`); they reach the
    :class:`Summary` and the rate bucket status reads (:func:`health_writes`).
    A retry past ``policy.max_retries`` becomes a ``retries_exhausted`` dead letter.
    """
    now = time.time() if now is None else now
    retries: list[tuple[float, bytes]] = []
    dead: list[tuple[str, str]] = []
    dead_counts: dict[str, int] = {}
    for outcome in outcomes:
        if outcome.fate is Fate.DELIVERED:
            delivered += 1
            continue
        try:
            decided = _decide(outcome, policy, auth_retry_interval_s, now)
        except Exception as exc:  # a record we cannot even plan must not hold the rest
            reason = Reason.MALFORMED
            decided = (reason, _unplannable_entry(outcome.item, exc))
        if isinstance(decided[0], Reason):
            reason, entry = decided
            dead.append((outcome.item.response_id, entry))
            dead_counts[reason.value] = dead_counts.get(reason.value, 0) + 1
        else:
            retries.append(decided)
    stats = {"delivered": delivered, "retried": len(retries)}
    stats.update({dead_lettered_field(reason): n for reason, n in dead_counts.items()})
    stats = {k: v for k, v in stats.items() if v}
    dead_ids = tuple(dead_id for dead_id, _ in dead)
    exhausted = set(dead_ids)
    retried_ids = tuple(
        o.item.response_id
        for o in outcomes
        if o.fate is Fate.RETRY and o.item.response_id not in exhausted
    )
    failures = [o for o in outcomes if o.fate is Fate.RETRY]
    summary = Summary(
        delivered,
        len(retries),
        dead_counts,
        requests,
        retried_ids,
        dead_ids,
        retry_detail=failures[0].detail if failures else "",
        unauthorized=any(not o.counts_as_retry for o in failures),
    )
    rates = {
        RATE_DELIVERED: delivered,
        RATE_RETRIED: len(retries),
        RATE_DEAD_LETTERED: len(dead),
        RATE_REQUESTS: requests,
        RATE_TRANSPORT_FAILED: transport_failed,
        RATE_UNAUTHORIZED: unauthorized,
    }
    noted, started, ended = health_writes(
        delivered=delivered,
        retried=len(retries),
        answered=requests - transport_failed - unauthorized,
        unauthorized=unauthorized,
    )
    resolution = Resolution(
        retries=retries,
        dead_letters=dead,
        stats=stats,
        rates={k: v for k, v in rates.items() if v},
        noted=noted,
        started=started,
        ended=ended,
    )
    return resolution, summary


def health_writes(
    *, delivered: int, retried: int, answered: int, unauthorized: int
) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """Which health-hash fields a settle sets to the server's time, sets if
    absent, and removes: ``(noted, started, ended)``.

    A delivery notes LAST_DELIVERED_AT. Records retried with none delivered
    start a run of retries (RETRYING_SINCE); any other settle ends it. A 401/403
    notes LAST_UNAUTHORIZED_AT and starts a run of refusals
    (UNAUTHORIZED_SINCE, kept if already there); an answer that took the key (a
    200 or a 4xx refusal) with no 401/403 in the same batch ends it. Batches
    that reached no server (all transport failures) neither start nor end it.
    """
    noted: list[str] = []
    started: list[str] = []
    ended: list[str] = []
    if delivered:
        noted.append(LAST_DELIVERED_AT)
    if retried and not delivered:
        started.append(RETRYING_SINCE)
    else:
        # Records left the waiting state (delivered, or dead-lettered): the run
        # is over, lest a poison record retried to exhaustion in a quiet
        # pipeline leave it running for the next record to be judged by.
        ended.append(RETRYING_SINCE)
    if unauthorized:
        noted.append(LAST_UNAUTHORIZED_AT)
        started.append(UNAUTHORIZED_SINCE)
    elif answered > 0:
        ended.append(UNAUTHORIZED_SINCE)
    return tuple(noted), tuple(started), tuple(ended)


def plan_after_error(
    raw: Sequence[bytes], error: BaseException, policy: BackoffPolicy, now: float | None = None
) -> tuple[Resolution, Summary]:
    """Settle a batch whose processing raised ``error``: each record is retried
    with the attempt counted (so it ends, at worst ``retries_exhausted``); one
    that cannot even be read or planned is dead-lettered ``malformed``."""
    now = time.time() if now is None else now
    detail = f"the worker failed on this batch: {type(error).__name__}: {error}"[:500]
    outcomes: list[Outcome] = []
    for message in raw:
        try:
            item = decode(message)
            fate = Fate.DEAD_LETTER if item.malformed else Fate.RETRY
            reason = Reason.MALFORMED if item.malformed else None
            outcomes.append(Outcome(item, fate, item.malformed or detail, reason))
        except Exception:
            item = Item(message, message, malformed_id(message), malformed=detail)
            outcomes.append(Outcome(item, Fate.DEAD_LETTER, detail, Reason.MALFORMED))
    return plan(outcomes, policy, auth_retry_interval_s=0.0, now=now)


def plan_parked(
    raw: Sequence[bytes], details: Sequence[str], now: float | None = None
) -> tuple[Resolution, Summary]:
    """Settle records RabbitMQ parked past its delivery limit: each is dead-lettered
    ``delivery_limit`` with the whole record, so ``dlq replay`` can send it again;
    ``details[i]`` says why ``raw[i]`` was parked."""
    now = time.time() if now is None else now
    outcomes: list[Outcome] = []
    for message, detail in zip(raw, details, strict=True):
        item = decode(message)
        reason = Reason.MALFORMED if item.malformed else Reason.DELIVERY_LIMIT
        outcomes.append(
            Outcome(item, Fate.DEAD_LETTER, item.malformed or detail, reason, sent=False)
        )
    return plan(outcomes, BackoffPolicy(), auth_retry_interval_s=0.0, now=now)


def _decide(
    outcome: Outcome, policy: BackoffPolicy, auth_retry_interval_s: float, now: float
) -> tuple[float, bytes] | tuple[Reason, str]:
    """A failed record's next step: ``(delay_s, message)`` to retry, or
    ``(reason, dead-letter entry)``."""
    item = outcome.item
    meta = _next_meta(item, outcome, now)
    if outcome.fate is Fate.RETRY:
        if not outcome.counts_as_retry:
            return auth_retry_interval_s, encode(item.body, meta)
        if item.retries < policy.max_retries:
            delay_s = policy.delay_s(item.retries)
            if outcome.retry_after_s is not None:
                delay_s = max(delay_s, outcome.retry_after_s)
            meta["retries"] = item.retries + 1
            return delay_s, encode(item.body, meta)
        reason = Reason.RETRIES_EXHAUSTED
    else:
        reason = outcome.reason or Reason.ERROR
    return reason, dead_letter_entry(item, outcome, reason, meta)


def _unplannable_entry(item: Item, exc: BaseException) -> str:
    """A dead-letter entry built from the raw message alone, for a record whose
    planning raised: nothing of it is parsed again."""
    detail = f"the worker could not process this record: {type(exc).__name__}: {exc}"[:500]
    entry: dict[str, Any] = {
        "id": item.response_id,
        "reason": Reason.MALFORMED.value,
        "detail": detail,
        "errors": [],
        "http_status": None,
        "attempts": 0,
        "retries": 0,
        "replays": 0,
        "first_failure_at": None,
        "last_failure_at": None,
        "service_key": item.service_key,
        "record": None,
        "raw": item.raw.decode("utf-8", "replace"),
    }
    return json.dumps(entry, separators=(",", ":"))


def _next_meta(item: Item, outcome: Outcome, now: float) -> dict[str, Any]:
    meta = dict(item.meta)
    if outcome.sent:
        meta["attempts"] = item.attempts + 1
    if outcome.fate is not Fate.DELIVERED:
        meta.setdefault("first_failure_at", now)
        meta["last_failure_at"] = now
        meta["last_error"] = outcome.detail
        if outcome.http_status is not None:
            meta["last_http_status"] = outcome.http_status
    return meta


def dead_letter_entry(item: Item, outcome: Outcome, reason: Reason, meta: dict[str, Any]) -> str:
    """The JSON stored for a dead letter: the whole record and why it failed."""
    record = record_of(item)
    entry: dict[str, Any] = {
        "id": item.response_id,
        "reason": reason.value,
        "detail": outcome.detail,
        "errors": list(outcome.errors),
        "http_status": outcome.http_status or meta.get("last_http_status"),
        "attempts": meta.get("attempts", 0),
        "retries": meta.get("retries", 0),
        "replays": meta.get("replays", 0),
        "first_failure_at": meta.get("first_failure_at"),
        "last_failure_at": meta.get("last_failure_at"),
        "service_key": item.service_key or (record or {}).get("service_key"),
        "record": record,
    }
    if item.api_key_alias is not None:
        entry["api_key_alias"] = item.api_key_alias
    if record is None or item.malformed:
        entry["raw"] = item.raw.decode("utf-8", "replace")
    return json.dumps(entry, separators=(",", ":"))
