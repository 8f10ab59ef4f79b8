"""One delivery attempt of a batch: send it, split it to find the poison, decide each fate.

:func:`attempt` sends a batch through a ``post`` callable (the transport, or a
test's function) and returns an :class:`Attempt`: the records delivered and an
:class:`Outcome` for every other one. Plain functions: no Celery, no Redis, no
httpx. :func:`aicm_tasks.worker.delivery.plan` turns the outcomes into the
writes that settle the batch.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from aicm_tasks.broker.messages import Item, batch_body
from aicm_tasks.worker.outcomes import (
    DELIVERED_STATUSES,
    BatchVerdict,
    Fate,
    Post,
    Reason,
    VerdictKind,
    record_fate,
    suspects_a_record,
)


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
    #: Of those, the ones with no answer the contract reads (no connection, a
    #: timeout, 5xx, 429, an unreadable 200), and the ones answered 401/403.
    transport_failed: int = 0
    unauthorized: int = 0


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
    # whether anything else in this attempt got through (``server_works``).
    # Once anything did, a group answered 5xx is split down to single records,
    # so poison records, however many, hold no batch-mate past this attempt.
    # When nothing did, records that failed before are probed: a couple of them
    # (drawn at random, so no placement of poison defeats it) are sent alone;
    # one answered means the server works. An outage thus costs a batch 1
    # request on its first attempt and 1 + PROBES_PER_GROUP after, whatever its
    # size or how often it failed; blind bisection would cost up to 2n - 1.
    server_works = False
    suspects: list[tuple[list[Item], BatchVerdict, Post]] = []

    def send(group: list[Item], post: Post) -> None:
        nonlocal server_works
        done.requests += 1
        verdict = post(batch_body([item.body for item in group]))
        if verdict.kind is _TRANSIENT:
            done.transport_failed += 1
        elif verdict.kind is _UNAUTHORIZED:
            done.unauthorized += 1
        if verdict.kind is _REFUSED:
            server_works = True
            if len(group) > 1:
                middle = len(group) // 2
                send(group[:middle], post)
                send(group[middle:], post)
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
            if server_works:
                middle = len(group) // 2
                send(group[:middle], post)
                send(group[middle:], post)
            else:
                suspects.append((group, verdict, post))
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
    # Groups answered 5xx before anything got through (their whole was sent
    # already, so it is not sent again): probe, then split what is left.
    pending, suspects = suspects, []
    for group, verdict, sender in pending:
        rest = group
        if not server_works and max(item.retries for item in group) > 0:
            probed: set[str] = set()
            for index in _PROBE_RNG.sample(range(len(group)), min(PROBES_PER_GROUP, len(group))):
                send([group[index]], sender)  # a single record settles itself
                probed.add(group[index].response_id)
                if server_works:
                    break
            rest = [item for item in group if item.response_id not in probed]
        if server_works and len(rest) > 1:
            middle = len(rest) // 2
            send(rest[:middle], sender)
            send(rest[middle:], sender)
        elif server_works and rest:
            send(rest, sender)
        else:
            for item in rest:
                settle(item, _outcome_for(item, verdict))
    return done


#: Records of a batch answered 5xx sent alone, at most, to learn whether the
#: server works at all (see :func:`attempt`): two, so that both must be poison
#: for an attempt to learn nothing (about p**2 for a poison share p).
PROBES_PER_GROUP = 2
#: Draws the probes; random so that no placement of poison records defeats them.
_PROBE_RNG = random.Random()

#: Enum members looked up once: on Python 3.11 ``VerdictKind.RESULTS`` goes
#: through EnumType.__getattr__, four times the cost of a plain attribute.
_RESULTS, _REFUSED = VerdictKind.RESULTS, VerdictKind.REFUSED
_TRANSIENT, _UNAUTHORIZED = VerdictKind.TRANSIENT, VerdictKind.UNAUTHORIZED


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
