"""Deliver one batch and decide every record's fate; plain functions, no Celery, no Redis.

:func:`deliver` sends a batch through a ``post`` callable (the transport) and
returns one :class:`Outcome` per message; :func:`plan` turns outcomes into the
:class:`~aicm_tasks.broker.Resolution` that the broker applies atomically.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aicm_tasks.broker import Resolution
from aicm_tasks.messages import Item, batch_body, encode, record_of
from aicm_tasks.outcomes import (
    DELIVERED_STATUSES,
    BatchVerdict,
    Fate,
    Reason,
    VerdictKind,
    record_fate,
)
from aicm_tasks.retry import BackoffPolicy
from aicm_tasks.transport import Post


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

    def outcomes(self) -> list[Outcome]:
        """One outcome per record, the delivered ones included."""
        delivered = [Outcome(item, Fate.DELIVERED, "delivered") for item in self.delivered]
        return delivered + self.failed


def deliver(
    items: Sequence[Item],
    post: Post | None,
    aliases: Mapping[str, Post] | None = None,
) -> tuple[list[Outcome], int]:
    """:func:`attempt`, as one outcome per item and how many POSTs it took."""
    done = attempt(items, post, aliases)
    return done.outcomes(), done.requests


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
    the refused records are isolated.
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

    def send(group: list[Item], post: Post) -> None:
        done.requests += 1
        verdict = post(batch_body([item.body for item in group]))
        if verdict.kind is _REFUSED and len(group) > 1:
            middle = len(group) // 2
            send(group[:middle], post)
            send(group[middle:], post)
            return
        if verdict.kind is _RESULTS:
            results = verdict.results
            for item in group:
                result = results.get(item.response_id)
                if result is not None and result.status in DELIVERED_STATUSES:
                    settle(item, None)
                else:
                    settle(item, _outcome_for(item, verdict))
            return
        for item in group:
            settle(item, _outcome_for(item, verdict))

    for alias, group in _by_alias(list(first.values())).items():
        sender = post if alias is None else (aliases or {}).get(alias)
        if sender is not None:
            send(group, sender)
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
    return done


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
    dead: list[tuple[str, str, float]] = []
    dead_counts: dict[str, int] = {}
    for outcome in outcomes:
        if outcome.fate is Fate.DELIVERED:
            delivered += 1
            continue
        item = outcome.item
        meta = _next_meta(item, outcome, now)
        if outcome.fate is Fate.RETRY:
            if not outcome.counts_as_retry:
                retries.append((now + auth_retry_interval_s, encode(item.body, meta)))
                continue
            if item.retries < policy.max_retries:
                delay_s = policy.delay_s(item.retries)
                if outcome.retry_after_s is not None:
                    delay_s = max(delay_s, outcome.retry_after_s)
                meta["retries"] = item.retries + 1
                retries.append((now + delay_s, encode(item.body, meta)))
                continue
            reason = Reason.RETRIES_EXHAUSTED
        else:
            reason = outcome.reason or Reason.ERROR
        dead.append((item.response_id, dead_letter_entry(item, outcome, reason, meta), now))
        dead_counts[reason.value] = dead_counts.get(reason.value, 0) + 1
    stats = {"delivered": delivered, "retried": len(retries)}
    stats.update({f"dead_lettered:{reason}": n for reason, n in dead_counts.items()})
    stats = {k: v for k, v in stats.items() if v}
    dead_ids = tuple(dead_id for dead_id, _, _ in dead)
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
