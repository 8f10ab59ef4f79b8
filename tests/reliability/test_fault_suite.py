"""The fault suite: every scenario ends with exact accounting and zero lost.

published = delivered (unique response_id at the server) + dead-lettered + still
spooled. Duplicates are allowed (at-least-once) and reported.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

from aicm_tasks import create_app
from aicm_tasks.broker.dead_letters import Selection
from aicm_tasks.devtools.processes import stop_process, wait_until
from tests.support.accounting import account
from tests.support.faults import FaultProxy, hold
from tests.support.pipeline import Pipeline, PrivateRedis, in_background, publish, publish_paced
from tests.support.tasks import spool_of, track_of


def test_repeated_sigkill_of_two_workers_over_50000_records(pipeline: Pipeline) -> None:
    workers = [pipeline.start_worker(AICM_BATCH_SIZE="250") for _ in range(2)]
    producer, ids = in_background(publish_paced, pipeline, 50_000, 5000)
    kills = 0
    while producer.is_alive() and kills < 8:
        done = pipeline.settled()

        def progressed(since: int = done) -> bool:
            return pipeline.settled() > since + 2000 or not producer.is_alive()

        wait_until(progressed, 60, "progress")
        victim = kills % 2
        os.kill(workers[victim].pid, signal.SIGKILL)
        workers[victim].wait(10)
        workers[victim] = pipeline.start_worker(AICM_BATCH_SIZE="250")
        kills += 1
    producer.join()
    started = time.monotonic()
    pipeline.wait_drained(timeout_s=240)
    result = account(
        pipeline, f"sigkill x{kills}, 2 workers", set(ids), recovery_s=time.monotonic() - started
    )
    assert kills >= 3
    assert result.published == 50_000 and result.lost == 0 and result.dead_lettered == 0


def test_redis_restarted_mid_run_with_aof(pipeline_factory, private_redis: PrivateRedis) -> None:
    pipeline: Pipeline = pipeline_factory(broker_url=private_redis.url)
    for _ in range(2):
        pipeline.start_worker(AICM_BATCH_SIZE="200")
    producer, ids = in_background(publish_paced, pipeline, 20_000, 2000)
    wait_until(lambda: pipeline.settled() > 4000, 60, "delivery under way")
    private_redis.stop()
    hold(2)
    private_redis.start()
    restarted = time.monotonic()
    producer.join()
    spool = spool_of(pipeline.track)
    wait_until(lambda: spool.status().records == 0, 30, "the spool to drain")
    pipeline.wait_drained(timeout_s=180)
    result = account(
        pipeline, "redis restart (AOF)", set(ids), recovery_s=time.monotonic() - restarted
    )
    assert result.lost == 0 and result.published == 20_000
    assert all(w.poll() is None for w in pipeline.workers), pipeline.logs()


def test_track_down_for_a_minute_then_429_storm_hangs_and_garbage(pipeline_factory) -> None:
    probe = pipeline_factory()
    with FaultProxy(probe.server.url) as proxy:
        pipeline: Pipeline = pipeline_factory(api_base=proxy.url)
        env: dict[str, Any] = {"AICM_RETRY_MAX_S": "5", "AICM_HTTP_TIMEOUT_S": "2"}
        for _ in range(2):
            pipeline.start_worker(**env)
        proxy.set("503")
        ids = publish(pipeline, 3000, prefix="down")
        hold(60)
        proxy.set("429", retry_after_s="2")
        ids += publish(pipeline, 2000, prefix="storm")
        hold(10)
        proxy.set("hang")
        ids += publish(pipeline, 1000, prefix="hang")
        hold(6)
        proxy.set("garbage")
        ids += publish(pipeline, 1000, prefix="garbage")
        hold(4)
        proxy.set("pass")
        healed = time.monotonic()
        pipeline.wait_drained(timeout_s=180)
        result = account(
            pipeline,
            "/track 503 60s, 429, hang, garbage",
            set(ids),
            recovery_s=time.monotonic() - healed,
        )
    for mode in ("503", "429", "hang", "garbage"):
        assert proxy.state.counts.get(mode, 0) > 0, proxy.state.counts
    assert result.lost == 0 and result.dead_lettered == 0 and result.delivered == 7000


def test_broker_down_while_producers_publish_then_back(
    pipeline_factory, private_redis: PrivateRedis, tmp_path: Path
) -> None:
    pipeline: Pipeline = pipeline_factory(broker_url=private_redis.url)
    for _ in range(2):
        pipeline.start_worker()
    track = track_of(
        create_app(pipeline.settings.model_copy(update={"spool_dir": tmp_path / "spool"}))
    )
    ids = publish_paced(pipeline, 2000, 2000, prefix="up", track=track)
    private_redis.stop()
    ids += publish_paced(pipeline, 5000, 2000, prefix="down", track=track)
    assert spool_of(track).status().records > 0
    private_redis.start()
    back = time.monotonic()
    wait_until(lambda: spool_of(track).status().records == 0, 30, "the spool to drain")
    pipeline.wait_drained(timeout_s=120)
    result = account(
        pipeline, "broker down, spool on", set(ids), recovery_s=time.monotonic() - back
    )
    assert result.lost == 0 and result.published == 7000 and result.delivered == 7000


def test_401_for_a_while_then_the_key_is_fixed(pipeline_factory) -> None:
    probe = pipeline_factory()
    with FaultProxy(probe.server.url) as proxy:
        pipeline: Pipeline = pipeline_factory(api_base=proxy.url)
        for _ in range(2):
            pipeline.start_worker(AICM_MAX_RETRIES="2")
        proxy.set("401")
        ids = publish(pipeline, 5000)
        hold(8)
        assert pipeline.settled() == 0
        proxy.set("pass")
        fixed = time.monotonic()
        pipeline.wait_drained(timeout_s=120)
        result = account(pipeline, "401 then fixed", set(ids), recovery_s=time.monotonic() - fixed)
    assert result.lost == 0 and result.dead_lettered == 0 and result.delivered == 5000


def test_poison_records_scattered_in_large_batches(pipeline_factory) -> None:
    probe = pipeline_factory()
    with FaultProxy(probe.server.url) as proxy:
        proxy.set("poison")
        pipeline: Pipeline = pipeline_factory(api_base=proxy.url)
        ids: list[str] = []
        poison: set[str] = set()
        for n in range(20_000):
            if n % 997 == 0:
                poison.add(
                    pipeline.track.delay(
                        "openai::gpt-4o-mini", {"poison": True}, response_id=f"poison{n}"
                    ).id
                )
            else:
                ids.append(
                    pipeline.track.delay(
                        "openai::gpt-4o-mini", {"input_tokens": n}, response_id=f"ok{n}"
                    ).id
                )
        for _ in range(2):
            pipeline.start_worker(AICM_FLUSH_INTERVAL_S="1")
        pipeline.wait_drained(timeout_s=180)
        result = account(pipeline, "poison scattered (1 in 997)", set(ids) | poison)
    dead = {e["id"]: e["reason"] for e in pipeline.dead_letters.list(Selection(all=True))}
    assert set(dead) == poison and set(dead.values()) == {"rejected"}
    assert result.lost == 0 and result.delivered == len(ids)


def test_sigterm_during_a_flush(pipeline_factory) -> None:
    probe = pipeline_factory()
    with FaultProxy(probe.server.url) as proxy:
        proxy.state.slow_s = 1.5
        proxy.set("slow")  # every POST takes 1.5 s: a SIGTERM lands mid-flush
        pipeline: Pipeline = pipeline_factory(api_base=proxy.url)
        workers = [pipeline.start_worker() for _ in range(2)]
        ids = publish(pipeline, 10_000)
        wait_until(lambda: proxy.state.counts.get("slow", 0) >= 2, 60, "flushes in flight")
        codes = [stop_process(w, sig=signal.SIGTERM) for w in workers]
        assert codes == [0, 0], pipeline.logs()
        depth = pipeline.store.depth()
        assert depth["held"] == 0, depth  # settled or handed back, nothing left held
        proxy.set("pass")
        pipeline.start_worker()
        pipeline.wait_drained(timeout_s=120)
        result = account(pipeline, "sigterm during a flush", set(ids))
    assert result.lost == 0 and result.delivered == 10_000
