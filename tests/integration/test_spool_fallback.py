"""The broker goes away while producers publish: records are spooled, then delivered."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from aicm_tasks import create_app
from aicm_tasks.devtools.processes import free_port, start_redis, stop_process, wait_until
from aicm_tasks.settings import Settings
from tests.support.pipeline import Pipeline
from tests.support.tasks import spool_of, track_of

pytestmark = pytest.mark.integration


def test_records_published_while_the_broker_is_down_are_spooled_then_delivered(
    pipeline_factory, tmp_path: Path
) -> None:
    port = free_port()
    data_dir = tmp_path / "redis"
    private = start_redis(port, data_dir)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        pipeline: Pipeline = pipeline_factory(broker_url=url)
        pipeline.start_worker()
        spool_dir = tmp_path / "spool"
        producer = track_of(
            create_app(pipeline.settings.model_copy(update={"spool_dir": spool_dir}))
        )
        before = [
            producer.delay("openai::gpt-4o-mini", {"n": n}, response_id=f"up{n}").id
            for n in range(100)
        ]
        stop_process(private)
        during = [
            producer.delay("openai::gpt-4o-mini", {"n": n}, response_id=f"down{n}").id
            for n in range(300)
        ]
        assert spool_of(producer).status().records == 300
        private = start_redis(port, data_dir)
        # The producer's own drainer pushes them back within 30 s, with no further call.
        wait_until(lambda: spool_of(producer).status().records == 0, 30, "the spool to drain")
        pipeline.wait_settled(400, timeout_s=120)
        assert pipeline.server.response_ids() >= set(before) | set(during)
        assert pipeline.dead_letters.count() == 0
    finally:
        stop_process(private)


def test_spool_cli_reports_and_drains_by_hand(real_redis: redis.Redis, tmp_path: Path) -> None:
    from tests.conftest import TEST_REDIS_URL

    spool_dir = tmp_path / "spool"
    down = Settings(
        broker_url=f"redis://127.0.0.1:{free_port()}/0", spool_dir=spool_dir, publish_timeout_s=0.2
    )
    track = track_of(create_app(down))
    ids = [track.delay("a::b", {"n": n}).id for n in range(25)]
    other = track_of(create_app(down.model_copy(update={"queue": "other.queue"})))
    other.delay("a::b", {"n": 0}, response_id="other-0")
    # A file of an earlier version, left by a process that is gone: imported once.
    (spool_dir / "otherhost-1-aaaa.spool").write_bytes(
        track.build(("a::b", {"n": 99}), {"response_id": "legacy-0"}).message + b"\n"
    )
    ids.append("legacy-0")
    env = {**os.environ, "AICM_SPOOL_DIR": str(spool_dir), "AICM_BROKER_URL": TEST_REDIS_URL}

    def cli(*args: str) -> dict:
        result = subprocess.run(
            [sys.executable, "-m", "aicm_tasks", "spool", *args, "--json"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        return json.loads(result.stdout)

    figures = cli("status")
    assert (figures["records"], figures["other_records"]) == (26, 1)
    assert not list(spool_dir.glob("*.spool"))
    assert cli("drain") == {"pushed": 26}
    assert (cli("status")["records"], cli("status")["other_records"]) == (0, 1)
    assert {json.loads(m)["response_id"] for m in real_redis.lrange("aicm.tracking", 0, -1)} == set(
        ids
    )
