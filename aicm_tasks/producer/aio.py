"""Tracking from async code: validate on the event loop, publish off it.

``await track_async(service_key, usage, ...)`` takes the same arguments as
``track.delay``. The record is validated and serialised on the event loop (a few
microseconds; bad input raises right there, in the caller's task), and the one
Redis round trip runs in the loop's default executor. So the loop is never held
by the network: not by a slow Redis, not by the up to ``AICM_PUBLISH_TIMEOUT_S``
a publish may take before the record goes to the spool.

A plain ``track.delay`` inside a coroutine also works and costs one publish
(about 120 µs on a local Redis) of loop time; ``track_async`` is for apps where
even a slow broker must not stall the loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from aicm_tasks.producer.api import HasProducer, default_task


async def track_async(*args: Any, task: HasProducer | None = None, **fields: Any) -> str:
    """Publish one record without blocking the event loop; returns its ``response_id``.

    Arguments are those of ``track.delay``: ``(service_key, usage, *, response_id=None,
    timestamp=None, customer_key=None, context=None, anonymize_fields=None,
    anonymizer=None)``. ``task`` is the tracking task
    to publish with (default: ``aicm_tasks.track``). Raises ``RecordError`` for bad
    input (nothing published) and ``PublishError`` when the broker did not take the
    record and the spool could not keep it. Once the publish has started, cancelling
    the awaiting task does not stop it.
    """
    producer = (task or default_task()).producer
    record = producer.build(args, fields)
    await asyncio.get_running_loop().run_in_executor(None, producer.publish, record)
    return record.response_id


async def track_many_async(
    records: Iterable[Mapping[str, Any]],
    *,
    task: HasProducer | None = None,
    anonymize_fields: Iterable[str] | None = None,
    anonymizer: Callable[[Any], Any] | None = None,
) -> list[str]:
    """``track_many`` for async code: validate on the loop, one round trip off it.

    Every record is validated before any is published; returns the response_ids.
    ``anonymize_fields`` / ``anonymizer`` as for ``track_many``.
    """
    producer = (task or default_task()).producer
    built = producer.build_many(records, anonymize_fields=anonymize_fields, anonymizer=anonymizer)
    if built:
        await asyncio.get_running_loop().run_in_executor(None, producer.publish_many, built)
    return [record.response_id for record in built]
