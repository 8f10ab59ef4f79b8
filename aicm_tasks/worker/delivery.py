"""Deliver one batch and decide every record's fate; plain functions, no Celery, no Redis.

:func:`attempt` sends a batch through a ``post`` callable (the transport) and
decides every record's fate (an :class:`Attempt`); :func:`plan` turns those into the
:class:`~aicm_tasks.broker.records.Resolution` that the broker applies atomically.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aicm_tasks.broker.keys import dead_lettered_field
from aicm_tasks.broker.messages import Item, batch_body, decode, encode, malformed_id, record_of
from aicm_tasks.broker.records import Resolution
from aicm_tasks.worker.outcomes import (
    DELIVERED_STATUSES,
    BatchVerdict,
    Fate,
    Reason,
    VerdictKind,
    record_fate,
    suspects_a_record,
)
from aicm_tasks.worker.retry import BackoffPolicy
from aicm_tasks.worker.transport import Post


# Not frozen: a frozen dataclass sets each field through object.__setattr__, and
# one Outcome is built per record in the worker's hottest loop.
@dataclass(slots=True)
class Outcome:
    """What one delivery attempt decided for one message."""

    item: Item
    fate: Fate
    detail: str
    reason: Reason | None = None
    http_status: int | None = None
    errors: tuple[str, ...] = ()
    retry_after_s: float | None = None
    #: False when the failure is not the record's (a wrong API key): the retry
    #: is not counted against ``max_retries``.
    counts_as_retry: bool = True
    #: Whether the record was part of a POST in this attempt.
    sent: bool = True


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


@dataclass(slots=True)
class Attempt:
    """What one delivery attempt decided for a batch.

    Delivered records are kept as plain items: one :class:`Outcome` per record
    cost a tenth of the worker's CPU, and a delivered record needs no more.
    """

    #: Records the server accepted (every copy of a redelivered response_id).
    delivered: list[Item] = field(default_factory=list)
    #: Every other record: to retry or to dead-letter.
    failed: list[Outcome] = field(default_factory=list)
    #: POSTs it took.
    requests: int = 0


def attempt(
    items: Sequence[Item],
    post: Post | None,
    aliases: Mapping[str, Post] | None = None,
) -> Attempt:
    """Send ``items`` and decide every record's fate.

    ``post`` sends with the default API key (None: the worker has none) and
    ``aliases`` with the key of each alias. Records of different aliases never
    share a request; a record whose alias has no key is dead-lettered unsent.
    Copies of the same ``response_id`` (a redelivery) are sent once and share
    the fate. A whole-request 400/413/422 splits the batch in halves until
    the refused records are isolated; so does a 5xx (but 503) for records
    that failed before, until the record the server fails on is alone.
    """
    done = Attempt()
    delivered, failed = done.delivered, done.failed
    first: dict[str, Item] = {}
    copies: dict[str, list[Item]] = {}  # only for response_ids seen more than once
    for item in items:
        if item.malformed:
            failed.append(
                Outcome(item, Fate.DEAD_LETTER, item.malformed, Reason.MALFORMED, sent=False)
            )
        elif first.setdefault(item.response_id, item) is not item:
            copies.setdefault(item.response_id, [first[item.response_id]]).append(item)

    def settle(item: Item, outcome: Outcome | None) -> None:
        same = copies.get(item.response_id) if copies else None
        if outcome is None:
            if same:
                delivered.extend(same)
            else:
                delivered.append(item)
        elif same:
            failed.extend(_copy_outcome(outcome, copy) for copy in same)
        else:
            failed.append(outcome)

    # Splitting on a 5xx: a server that answers 500 to one record answers 500 to
    # every request holding it, exactly like an outage. What tells them apart is
    # whether anything else in this attempt got through (``server_works``). Until
    # then a failing group is split only ``blind`` levels deep, and only for
    # records that failed before: during an outage a batch costs 1 request on
    # its first attempt, then 3, 7, then at most 15 per attempt (blind depth
    # MAX_BLIND_SPLIT_DEPTH), while its backoff doubles, so the request rate
    # stays bounded. Once anything succeeded, failing groups are split down to
    # single records, so one poison record holds no batch-mate past this attempt.
    server_works = False
    suspects: list[tuple[list[Item], BatchVerdict, Post]] = []

    def send(group: list[Item], post: Post, blind: int) -> None:
        nonlocal server_works
        done.requests += 1
        verdict = post(batch_body([item.body for item in group]))
        if verdict.kind is _REFUSED:
            server_works = True
            if len(group) > 1:
                middle = len(group) // 2
                send(group[:middle], post, blind)
                send(group[middle:], post, blind)
                return
        elif verdict.kind is _RESULTS:
            server_works = True
            results = verdict.results
            for item in group:
                result = results.get(item.response_id)
                if result is not None and result.status in DELIVERED_STATUSES:
                    settle(item, None)
                else:
                    settle(item, _outcome_for(item, verdict))
            return
        elif len(group) > 1 and suspects_a_record(verdict):
            if server_works or blind > 0:
                middle = len(group) // 2
                send(group[:middle], post, blind - 1)
                send(group[middle:], post, blind - 1)
            else:
                suspects.append((group, verdict, post))
            return
        for item in group:
            settle(item, _outcome_for(item, verdict))

    for alias, group in _by_alias(list(first.values())).items():
        sender = post if alias is None else (aliases or {}).get(alias)
        if sender is not None:
            blind = min(MAX_BLIND_SPLIT_DEPTH, max(item.retries for item in group))
            send(group, sender, blind)
            continue
        detail = (
            "this worker has no default API key (AICM_API_KEY)"
            if alias is None
            else f"this worker holds no key for API-key alias {alias!r} (AICM_API_KEYS)"
        )
        for item in group:
            settle(
                item,
                Outcome(item, Fate.DEAD_LETTER, detail, Reason.UNKNOWN_API_KEY_ALIAS, sent=False),
            )
    # Groups left unsplit before anything got through: split them now that
    # something did (their whole was answered 5xx already, so not sent again).
    pending, suspects = suspects, []
    for group, verdict, sender in pending:
        if server_works:
            middle = len(group) // 2
            send(group[:middle], sender, 0)
            send(group[middle:], sender, 0)
        else:
            for item in group:
                settle(item, _outcome_for(item, verdict))
    return done


#: How many levels a batch answered 5xx is split before any request of the
#: attempt got through (see :func:`attempt`): at most 2**(depth+1) - 1 requests.
MAX_BLIND_SPLIT_DEPTH = 3

#: Enum members looked up once: on Python 3.11 ``VerdictKind.RESULTS`` goes
#: through EnumType.__getattr__, four times the cost of a plain attribute.
_RESULTS, _REFUSED = VerdictKind.RESULTS, VerdictKind.REFUSED


def _by_alias(items: list[Item]) -> dict[str | None, list[Item]]:
    """Items grouped by API-key alias, in order; one group in the common case."""
    groups: dict[str | None, list[Item]] = {}
    for item in items:
        alias = item.api_key_alias if item.meta else None
        group = groups.get(alias)
        if group is None:
            groups[alias] = group = []
        group.append(item)
    return groups


def _outcome_for(item: Item, verdict: BatchVerdict) -> Outcome:
    status = verdict.http_status
    if verdict.kind is VerdictKind.RESULTS:
        result = verdict.results.get(item.response_id)
        fate, reason, detail = record_fate(result)
        errors = result.errors if result else ()
        return Outcome(item, fate, detail, reason, status, errors)
    if verdict.kind is VerdictKind.REFUSED:
        return Outcome(item, Fate.DEAD_LETTER, verdict.detail, Reason.REJECTED, status)
    if verdict.kind is VerdictKind.UNAUTHORIZED:
        return Outcome(item, Fate.RETRY, verdict.detail, None, status, counts_as_retry=False)
    return Outcome(
        item, Fate.RETRY, verdict.detail, None, status, retry_after_s=verdict.retry_after_s
    )


def _copy_outcome(outcome: Outcome, item: Item) -> Outcome:
    if item is outcome.item:
        return outcome
    return Outcome(
        item,
        outcome.fate,
        outcome.detail,
        outcome.reason,
        outcome.http_status,
        outcome.errors,
        outcome.retry_after_s,
        outcome.counts_as_retry,
        outcome.sent,
    )


def plan(
    outcomes: Sequence[Outcome],
    policy: BackoffPolicy,
    *,
    auth_retry_interval_s: float,
    now: float | None = None,
    delivered: int = 0,
) -> tuple[Resolution, Summary]:
    """Turn outcomes into the writes that settle the batch, and count them.

    ``delivered`` counts delivered records not among ``outcomes`` (see
    :class:`Attempt`). A retry past ``policy.max_retries`` becomes a
    ``retries_exhausted`` dead letter.
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
        0,
        retried_ids,
        dead_ids,
        retry_detail=failures[0].detail if failures else "",
        unauthorized=any(not o.counts_as_retry for o in failures),
    )
    return Resolution(retries=retries, dead_letters=dead, stats=stats), summary


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
