"""What every delivery service does with a batch once it holds one, whatever the broker.

Decode the messages, send them (:func:`~aicm_tasks.worker.attempts.attempt`),
plan every record's fate (:func:`~aicm_tasks.worker.delivery.plan`), time the
POSTs for observers and log the settled batch. The Redis service
(:mod:`aicm_tasks.worker.service`) and the RabbitMQ one
(:mod:`aicm_tasks.worker.rabbitmq_service`) differ only in how they take a
batch and how they settle it; this is the part between.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from aicm_tasks.broker.messages import Item, decode
from aicm_tasks.broker.resolution import Resolution
from aicm_tasks.worker.attempts import attempt
from aicm_tasks.worker.delivery import Summary, plan, plan_after_error
from aicm_tasks.worker.observe import Observers
from aicm_tasks.worker.outcomes import BatchVerdict, Post
from aicm_tasks.worker.retry import BackoffPolicy

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Processed:
    """One batch sent and planned: its items (empty when processing failed), the
    writes that settle it, and its counts."""

    items: Sequence[Item]
    resolution: Resolution
    summary: Summary


def process(
    raw: Sequence[bytes],
    post: Post | None,
    aliases: Mapping[str, Post],
    policy: BackoffPolicy,
    *,
    auth_retry_interval_s: float,
) -> Processed:
    """Send the batch ``raw`` and plan every record's fate. Never raises.

    A bug, or a record no check foresaw: every record is retried with its
    attempt counted (so it ends, at worst as ``retries_exhausted``), and one
    that cannot even be read is dead-lettered ``malformed``. Handing the batch
    back uncounted would cycle it, and its batch-mates, forever.
    """
    try:
        items = [decode(message) for message in raw]
        done = attempt(items, post, aliases)
        resolution, summary = plan(
            done.failed,
            policy,
            auth_retry_interval_s=auth_retry_interval_s,
            delivered=len(done.delivered),
            requests=done.requests,
            transport_failed=done.transport_failed,
            unauthorized=done.unauthorized,
        )
    except Exception as exc:
        logger.exception(
            "could not process a batch of %d records; each is retried with the "
            "attempt counted, or dead-lettered malformed",
            len(raw),
        )
        resolution, summary = plan_after_error(raw, exc, policy)
        return Processed((), resolution, summary)
    return Processed(items, resolution, summary)


def timed(post: Post, observers: Observers) -> Post:
    """``post``, telling ``observers`` how each request went."""

    def timed_post(body: bytes) -> BatchVerdict:
        started = time.monotonic()
        verdict = post(body)
        observers.request_done(verdict.http_status, time.monotonic() - started)
        return verdict

    return timed_post


def log_batch(summary: Summary, *, elapsed_s: float, auth_retry_interval_s: float) -> None:
    """One INFO line per settled batch; a WARNING for retries, an ERROR for dead letters."""
    dead = sum(summary.dead_lettered.values())
    logger.info(
        "batch settled: delivered=%d retried=%d dead_lettered=%d requests=%d in %.3fs",
        summary.delivered,
        summary.retried,
        dead,
        summary.requests,
        elapsed_s,
    )
    if summary.unauthorized:
        logger.error(
            "the /track API refused the API key (%s): %d records kept and tried again every "
            "%.0fs; check AICM_API_KEY (or the alias's key in AICM_API_KEYS)",
            summary.retry_detail,
            summary.retried,
            auth_retry_interval_s,
        )
    elif summary.retried:
        logger.warning(
            "%d records scheduled for retry (%s): response_ids %s",
            summary.retried,
            summary.retry_detail,
            some(summary.retried_ids),
        )
    if dead:
        logger.error(
            "%d records dead-lettered %s: response_ids %s (see `aicm-tasks dlq list`)",
            dead,
            summary.dead_lettered,
            some(summary.dead_lettered_ids),
        )


def close_all(closers: Sequence[Callable[[], None]]) -> None:
    """Run each of a stopped service's closers (the transport's close); one that
    raises is logged and the rest still run."""
    for close in closers:
        try:
            close()
        except Exception:
            logger.exception("could not close %r at shutdown", close)


def some(ids: Sequence[str], most: int = 10) -> str:
    """At most ``most`` ids for a log line, and how many more there were."""
    shown = ", ".join(ids[:most])
    return f"{shown} (+{len(ids) - most} more)" if len(ids) > most else shown
