"""The pre-flight check: ``check_limits`` before spending money on an LLM call.

It reads the process's snapshot of the triggered limits
(:class:`~aicm_tasks.producer.limit_guard.LimitGuard`), so it costs a lookup,
not a round trip, and answers the same in every process and host: the set is
kept in the broker by the workers.
"""

from __future__ import annotations

import asyncio

from aicm_tasks.errors import UsageLimitError, usage_limit_exceeded_class
from aicm_tasks.limits import TriggeredLimit
from aicm_tasks.producer.api import HasProducer, default_task


def check_limits(
    service_key: str | None = None,
    customer_key: str | None = None,
    *,
    api_key_alias: str | None = None,
    raise_on_match: bool = True,
    task: HasProducer | None = None,
) -> list[TriggeredLimit]:
    """Check before spending: the triggered limits that a record of ``service_key``
    and ``customer_key`` would match (the SDK's rule: a key not given matches any).

    Raises :class:`~aicm_tasks.errors.UsageLimitExceeded` when there are any,
    or returns them (an empty list when none) with ``raise_on_match=False``.
    Reads the process's snapshot (at most ``AICM_LIMITS_REFRESH_MS`` old), so it
    costs a lookup, not a round trip; it works whether ``AICM_LIMITS_ENABLED`` is
    set or not. ``api_key_alias`` names the key the records go with (default:
    the workers' default key); ``task`` the tracking task (default ``aicm_tasks.track``).
    """
    guard = (task or default_task()).producer.limits
    return _answer(guard.check(service_key, customer_key, api_key_alias), raise_on_match)


async def check_limits_async(
    service_key: str | None = None,
    customer_key: str | None = None,
    *,
    api_key_alias: str | None = None,
    raise_on_match: bool = True,
    task: HasProducer | None = None,
) -> list[TriggeredLimit]:
    """:func:`check_limits` for async code: a snapshot due for a refresh is read off
    the event loop (the read is a Redis round trip)."""
    guard = (task or default_task()).producer.limits
    if guard.fresh:
        found = guard.check(service_key, customer_key, api_key_alias)
    else:
        found = await asyncio.get_running_loop().run_in_executor(
            None, guard.check, service_key, customer_key, api_key_alias
        )
    return _answer(found, raise_on_match)


def _answer(found: list[TriggeredLimit], raise_on_match: bool) -> list[TriggeredLimit]:
    if found and raise_on_match:
        error: UsageLimitError = usage_limit_exceeded_class()(found)
        raise error
    return found
