"""The no-loss promises under process and broker faults, over real parts."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import pytest
import redis

from aicm_tasks.devtools.processes import free_port, start_redis, stop_process, wait_until
from tests.support.pipeline import Pipeline, publish, publish_paced

pytestmark = pytest.mark.integration


def test_sigkill_of_workers_mid_stream_loses_nothing(pipeline: Pipeline) -> None:
    worker = pipeline.start_worker(AICM_BATCH_SIZE="200")
    ids: list[str] = []
    # A paced stream (about 2,000 records/s for 10 s) so kills land mid-stream.
    producer = threading.Thread(
        target=lambda: ids.extend(publish_paced(pipeline, 20_000, per_s=2000))
    )
    producer.start()
    for _ in range(3):
        done = pipeline.settled()

        def progressed(since: int = done) -> bool:
            return pipeline.settled() > since + 1000

        wait_until(progressed, 60, "progress before the kill")
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(10)
        worker = pipeline.start_worker(AICM_BATCH_SIZE="200")
    producer.join()
    assert len(ids) == 20_000
    pipeline.wait_drained(timeout_s=180)
    assert pipeline.server.response_ids() == set(ids)
    assert pipeline.dead_letters.count() == 0
    stats = pipeline.server.stats()
    # Duplicates are allowed (at-least-once) and carry the same response_id.
    assert stats["events"] == 20_000
    assert stats["received"] == 20_000 + stats["duplicates"]


def test_sigterm_hands_back_or_finishes_what_the_worker_holds(pipeline: Pipeline) -> None:
    worker = pipeline.start_worker(AICM_BATCH_SIZE="100")
    ids = publish(pipeline, 5000)
    wait_until(lambda: pipeline.settled() > 500, 60, "delivery to start")
    assert stop_process(worker, sig=signal.SIGTERM) == 0
    depth = pipeline.store.depth()
    assert depth["held"] == 0 and depth["workers"] == 0, depth
    pipeline.start_worker()
    pipeline.wait_drained()
    assert pipeline.server.response_ids() == set(ids)


def test_delivery_resumes_after_redis_restarts_with_aof_and_nothing_is_lost(
    pipeline_factory, tmp_path: Path
) -> None:
    port = free_port()
    data_dir = tmp_path / "private-redis"
    private = start_redis(port, data_dir, appendonly=True)
    try:
        url = f"redis://127.0.0.1:{port}/0"
        pipeline: Pipeline = pipeline_factory(broker_url=url)
        pipeline.start_worker(AICM_BATCH_SIZE="100")
        ids = publish(pipeline, 5000, prefix="before")
        wait_until(lambda: pipeline.settled() > 1000, 60, "delivery to start")
        redis.Redis.from_url(url).shutdown(nosave=False)  # AOF is flushed on a clean shutdown
        private.wait(15)
        private = start_redis(port, data_dir, appendonly=True)
        ids += publish(pipeline, 5000, prefix="after")
        try:
            pipeline.wait_drained(timeout_s=60)
        except TimeoutError:
            raise AssertionError(
                f"{pipeline.store.depth()} {pipeline.store.stats()}\n{pipeline.logs()}"
            ) from None
        assert pipeline.server.response_ids() == set(ids)
        assert pipeline.dead_letters.count() == 0
        assert all(w.poll() is None for w in pipeline.workers), pipeline.logs()
    finally:
        stop_process(private)
