"""The whole pipeline over real parts: track.delay -> Redis -> worker -> local server."""

from __future__ import annotations

import json

import pytest

from aicm_tasks.devtools.processes import wait_until
from aicm_tasks.producer.record import build_record
from tests.support.faults import FaultProxy, hold
from tests.support.pipeline import Pipeline, dump, publish

pytestmark = pytest.mark.integration


def test_ten_thousand_records_arrive_once_each(pipeline: Pipeline) -> None:
    pipeline.start_worker()
    ids = publish(pipeline, 10_000)
    pipeline.wait_settled(10_000)
    pipeline.wait_drained()
    assert pipeline.server.response_ids() == set(ids)
    assert pipeline.store.stats()["delivered"] == 10_000
    assert pipeline.dead_letters.count() == 0


def test_a_mixed_batch_is_routed_to_delivered_and_each_dead_letter_reason(
    pipeline: Pipeline,
) -> None:
    good = publish(pipeline, 50, prefix="good")
    unknown = publish(pipeline, 5, service="acme::imaginary", prefix="unknown")
    # The call site refuses such records now; one written past it (an older
    # producer, a hand-made LPUSH) is answered `error` by the server.
    rejected = []
    for n in range(3):
        record = build_record("openai::gpt-4o-mini", {"input_tokens": 1}, response_id=f"bad{n}")
        pipeline.store.push(
            json.dumps({**record.data, "payload": {"input_tokens": "many"}}).encode()
        )
        rejected.append(record.response_id)
    pipeline.start_worker()
    pipeline.wait_settled(58)
    assert pipeline.server.response_ids() == set(good)
    entries = {e["id"]: e for e in _all_dead(pipeline)}
    assert {i for i, e in entries.items() if e["reason"] == "service_key_unknown"} == set(unknown)
    assert {i for i, e in entries.items() if e["reason"] == "error"} == set(rejected)
    assert all(e["errors"] for e in entries.values()), dump(entries)
    assert entries["unknown0"]["record"]["service_key"] == "acme::imaginary"


def test_a_poison_record_is_isolated_and_its_batch_mates_delivered(pipeline_factory) -> None:
    probe = pipeline_factory()
    with FaultProxy(probe.server.url) as proxy:
        proxy.set("poison")
        pipeline: Pipeline = pipeline_factory(api_base=proxy.url)
        good = publish(pipeline, 300, prefix="ok")
        poison = pipeline.track.delay(
            "openai::gpt-4o-mini", {"poison": True}, response_id="poison-1"
        ).id
        good += publish(pipeline, 300, prefix="ok2-")
        pipeline.start_worker(AICM_FLUSH_INTERVAL_S="1")
        pipeline.wait_settled(601)
    assert pipeline.server.response_ids() >= set(good)
    (entry,) = _all_dead(pipeline)
    assert entry["id"] == poison and entry["reason"] == "rejected" and entry["http_status"] == 422


def test_a_dead_letter_is_replayed_and_delivered_once_the_server_knows_its_key(
    pipeline: Pipeline,
) -> None:
    (rid,) = publish(pipeline, 1, service="acme::brand-new-model", prefix="late")
    pipeline.start_worker()
    pipeline.wait_settled(1)
    assert pipeline.dead_letters.get(rid)["reason"] == "service_key_unknown"
    pipeline.server.learn("acme::brand-new-model")
    from aicm_tasks.broker.dead_letters import Selection

    assert pipeline.dead_letters.replay(Selection(ids=(rid,))) == [rid]
    pipeline.wait_settled(2)
    assert rid in pipeline.server.response_ids()
    assert pipeline.dead_letters.count() == 0


def test_a_503_window_and_a_429_storm_are_ridden_out(pipeline_factory) -> None:
    probe = pipeline_factory()
    with FaultProxy(probe.server.url) as proxy:
        pipeline: Pipeline = pipeline_factory(api_base=proxy.url)
        pipeline.start_worker()
        proxy.set("503")
        ids = publish(pipeline, 500, prefix="a")
        hold(3)
        proxy.set("429", retry_after_s="1")
        ids += publish(pipeline, 500, prefix="b")
        hold(3)
        proxy.set("pass")
        pipeline.wait_settled(1000, timeout_s=120)
    assert proxy.state.counts.get("503", 0) > 0 and proxy.state.counts.get("429", 0) > 0
    assert pipeline.server.response_ids() == set(ids)
    assert pipeline.dead_letters.count() == 0
    assert pipeline.store.stats().get("retried", 0) > 0


def test_a_wrong_key_keeps_records_until_it_is_fixed(pipeline_factory) -> None:
    probe = pipeline_factory()
    with FaultProxy(probe.server.url) as proxy:
        proxy.set("401")
        pipeline: Pipeline = pipeline_factory(api_base=proxy.url)
        pipeline.start_worker(AICM_MAX_RETRIES="1")
        ids = publish(pipeline, 300)
        wait_until(lambda: proxy.state.counts.get("401", 0) >= 3, 60, "repeated 401s")
        assert pipeline.dead_letters.count() == 0 and pipeline.settled() == 0
        proxy.set("pass")  # the key is accepted again
        pipeline.wait_settled(300)
    assert pipeline.server.response_ids() == set(ids)
    assert pipeline.dead_letters.count() == 0
    assert "HTTP 401" in pipeline.logs()


def test_a_batch_in_backoff_does_not_stall_the_others(pipeline_factory) -> None:
    probe = pipeline_factory()
    with FaultProxy(probe.server.url) as proxy:
        proxy.set("flaky")
        pipeline: Pipeline = pipeline_factory(api_base=proxy.url)
        # The first retry waits 24-30 s: far longer than delivering the rest takes.
        pipeline.start_worker(AICM_RETRY_BASE_S="30", AICM_RETRY_MAX_S="30")
        flaky = publish(pipeline, 20, service="flaky::model", prefix="flaky")
        wait_until(
            lambda: pipeline.store.depth()["scheduled"] == 20,
            60,
            "the flaky batch to be in backoff",
        )
        good = publish(pipeline, 2000, prefix="good")
        pipeline.wait_settled(2000)
        assert (
            pipeline.store.depth()["scheduled"] == 20
        )  # still waiting while the others went through
    assert pipeline.server.response_ids() == set(good)
    assert not set(flaky) & pipeline.server.response_ids()


def _all_dead(pipeline: Pipeline) -> list[dict]:
    from aicm_tasks.broker.dead_letters import Selection

    return pipeline.dead_letters.list(Selection(all=True))
