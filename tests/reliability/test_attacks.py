"""The attacker's pass over docs/guarantees.md with real parts: Redis, worker
processes, the local server behind the fault proxy. Exact accounting each time."""

from __future__ import annotations

import time

import pytest

from tests.support.accounting import account
from tests.support.faults import FaultProxy, hold
from tests.support.pipeline import Pipeline, publish

pytestmark = [pytest.mark.integration, pytest.mark.reliability]


def test_a_track_answer_dripped_a_byte_at_a_time_holds_no_batch_past_the_timeout(
    pipeline_factory,
) -> None:
    probe = pipeline_factory()
    with FaultProxy(probe.server.url) as proxy:
        proxy.state.hang_s = 600  # each byte well within the read timeout, the whole never
        pipeline: Pipeline = pipeline_factory(api_base=proxy.url)
        pipeline.start_worker(AICM_HTTP_TIMEOUT_S="2", AICM_BATCH_SIZE="50")
        proxy.set("drip")
        ids = publish(pipeline, 400, prefix="drip")
        hold(5)
        proxy.set("pass")
        healed = time.monotonic()
        pipeline.wait_drained(timeout_s=90)
        result = account(
            pipeline, "/track drips its answers", set(ids), recovery_s=time.monotonic() - healed
        )
    assert proxy.state.counts.get("drip", 0) > 0, proxy.state.counts
    assert result.lost == 0 and result.dead_lettered == 0 and result.delivered == 400
