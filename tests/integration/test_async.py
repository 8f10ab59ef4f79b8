"""track_async under an event-loop lag probe, with a broker made slow on purpose.

A TCP proxy in front of the real Redis holds every request for ``DELAY_S``, so
one publish takes at least that long. The probe (a 5 ms ticker) measures how
late the loop runs: with ``track_async`` it stays within a generous margin of
its own idle baseline; a plain ``track.delay`` on the loop, the control, makes
it at least ``DELAY_S`` late, which proves the probe sees a blocked loop. The
bounds compare with ``DELAY_S`` and the measured baseline, not with the
machine's speed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import pytest

from aicm_tasks import create_app, track_async, track_many_async
from aicm_tasks.devtools.processes import stop_process
from aicm_tasks.settings import Settings
from tests.conftest import TEST_REDIS_URL
from tests.support.pipeline import Pipeline
from tests.support.slow_proxy import start_slow_proxy
from tests.support.tasks import track_of

pytestmark = pytest.mark.integration

#: How long the proxy holds each request to Redis, in seconds.
DELAY_S = 0.8
#: The probe's period, in seconds.
TICK_S = 0.005


async def worst_lag_during(work: Callable[[], Awaitable[Any]]) -> tuple[float, Any]:
    """Run ``work`` while a ticker measures how late the loop wakes it (worst case, s)."""
    done = asyncio.Event()
    worst = 0.0

    async def ticker() -> None:
        nonlocal worst
        while not done.is_set():
            started = time.perf_counter()
            await asyncio.sleep(TICK_S)
            worst = max(worst, time.perf_counter() - started - TICK_S)

    probe = asyncio.create_task(ticker())
    await asyncio.sleep(2 * TICK_S)
    result = await work()
    done.set()
    await probe
    return worst, result


def test_track_async_never_holds_the_loop_while_the_broker_is_slow(pipeline: Pipeline) -> None:
    target = urlsplit(TEST_REDIS_URL)
    port, proxy = start_slow_proxy((target.hostname or "127.0.0.1", target.port or 6379), DELAY_S)
    try:
        slow = Settings(
            broker_url=f"redis://127.0.0.1:{port}{target.path or '/0'}",
            queue=pipeline.settings.queue,
            key_prefix=pipeline.settings.key_prefix,
            publish_timeout_s=20,  # each attempt may wait 10 s: the delay never times out
            spool_enabled=False,  # a publish that failed raises instead of spooling
        )
        task = track_of(create_app(slow))

        async def scenario() -> dict[str, Any]:
            baseline, _ = await worst_lag_during(lambda: asyncio.sleep(1.0))

            async def publish_async() -> list[Any]:
                return await asyncio.gather(
                    *(
                        track_async(
                            "openai::gpt-4o-mini",
                            {"input_tokens": n},
                            response_id=f"a{n}",
                            task=task,
                        )
                        for n in range(8)
                    ),
                    track_many_async(
                        [
                            {
                                "service_key": "openai::gpt-4o-mini",
                                "usage": {"n": n},
                                "response_id": f"m{n}",
                            }
                            for n in range(3)
                        ],
                        task=task,
                    ),
                )

            started = time.perf_counter()
            with_async, published = await worst_lag_during(publish_async)
            async_s = time.perf_counter() - started

            async def blocking() -> Any:
                return task.delay(
                    "openai::gpt-4o-mini", {"input_tokens": 1}, response_id="blocking"
                )

            with_blocking, _ = await worst_lag_during(blocking)
            return {
                "baseline": baseline,
                "async": with_async,
                "async_s": async_s,
                "blocking": with_blocking,
                "published": published,
            }

        seen = asyncio.run(scenario())
    finally:
        stop_process(proxy)

    # The publishes went through the slow proxy (so there was something to block on)...
    assert seen["async_s"] >= DELAY_S, seen
    assert seen["published"][:8] == [f"a{n}" for n in range(8)]
    assert seen["published"][8] == ["m0", "m1", "m2"]
    # ...the probe sees a blocked loop when there is one...
    assert seen["blocking"] >= 0.9 * DELAY_S, seen
    # ...and track_async never blocked it for anything like one slow publish.
    assert seen["async"] < seen["baseline"] + DELAY_S / 2, seen

    pipeline.start_worker()
    pipeline.wait_settled(12)
    assert pipeline.server.response_ids() == {
        *(f"a{n}" for n in range(8)),
        "m0",
        "m1",
        "m2",
        "blocking",
    }
