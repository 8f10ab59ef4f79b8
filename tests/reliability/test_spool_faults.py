"""The producer's spool under faults: every record it accepted ends in Redis or stays spooled.

Each test counts exactly: appended (or told to the caller as accepted) =
pushed to Redis + still in the spool, 0 lost. Races are forced with barriers and
events; the broker is a real Redis (the test db, or a PrivateRedis that is
stopped and restarted with its AOF).
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import cast

import pytest
import redis

from aicm_tasks import create_app
from aicm_tasks.broker.keys import Keys
from aicm_tasks.broker.records import RecordStore
from aicm_tasks.devtools.processes import free_port
from aicm_tasks.producer.spool import Spool
from aicm_tasks.settings import Settings
from tests.conftest import TEST_REDIS_URL
from tests.support.accounting import account
from tests.support.pipeline import Pipeline, PrivateRedis
from tests.support.spool_sink import body
from tests.support.tasks import spool_of, track_of


def queued_ids(client: redis.Redis, queue: str) -> list[str]:
    return [json.loads(m)["response_id"] for m in client.lrange(queue, 0, -1)]


def spooled_ids(spool: Spool) -> list[str]:
    import sqlite3

    with sqlite3.connect(spool.path) as conn:
        rows = conn.execute(
            "SELECT message FROM records WHERE destination = ?", (spool.destination,)
        ).fetchall()
    return [json.loads(bytes(m))["response_id"] for (m,) in rows]


def test_appends_and_drains_in_threads_lose_nothing(
    real_redis: redis.Redis, tmp_path: Path
) -> None:
    spool = Spool(tmp_path, max_bytes=10**8)
    store = RecordStore(real_redis, Keys("spool.threads", "spool-t"))
    start = threading.Barrier(4)
    appended: list[list[str]] = [[], [], []]

    def append(k: int) -> None:
        start.wait()
        for n in range(1000):
            spool.append(body(n, prefix=f"t{k}-"))
            appended[k].append(f"t{k}-{n}")

    threads = [threading.Thread(target=append, args=(k,)) for k in range(3)]
    for thread in threads:
        thread.start()
    start.wait()
    drains = 0
    while any(t.is_alive() for t in threads):
        spool.drain(store)
        drains += 1
    spool.drain(store)
    everything = {i for ids in appended for i in ids}
    in_redis = queued_ids(real_redis, "spool.threads")
    assert set(in_redis) == everything and len(in_redis) == 3000  # no loss, no duplicate
    assert drains > 1 and spool.status().records == 0


def _append_in_child(directory: str, start, done) -> None:
    spool = Spool(Path(directory), max_bytes=10**8)
    start.wait()
    for n in range(2000):
        spool.append(body(n, prefix="proc-"))
    done.set()


def test_appends_and_drains_in_two_processes_lose_nothing(
    real_redis: redis.Redis, tmp_path: Path
) -> None:
    context = multiprocessing.get_context("spawn")
    start, done = context.Barrier(2), context.Event()
    child = context.Process(target=_append_in_child, args=(str(tmp_path), start, done))
    child.start()
    spool = Spool(tmp_path, max_bytes=10**8)
    store = RecordStore(real_redis, Keys("spool.procs", "spool-p"))
    start.wait(60)
    drains = 0
    while not done.is_set() and child.is_alive():
        spool.drain(store)
        drains += 1
        # A drain thread runs every few seconds, not back to back: SQLite's
        # lock is not fair, and a drainer looping flat out can starve an
        # appender past its busy timeout.
        time.sleep(0.005)
    child.join(60)
    assert child.exitcode == 0
    spool.drain(store)
    in_redis = queued_ids(real_redis, "spool.procs")
    assert sorted(in_redis) == sorted(f"proc-{n}" for n in range(2000))
    assert drains > 1


class StopsRedisMidPush:
    """A drain target that, mid-push, lets the owner append and then loses the broker."""

    def __init__(self, store: RecordStore, server: PrivateRedis, owner_appends) -> None:
        self.store, self.server, self.owner_appends = store, server, owner_appends

    def push_many(self, messages: Sequence[bytes]) -> None:
        self.owner_appends()  # the interleaving of issue 11, item 2
        self.server.stop()
        self.store.push_many(messages)  # raises: the broker is gone

    def schedule(self, items: Iterable[tuple[float, bytes]]) -> None:
        self.store.schedule(items)


def test_a_drain_failing_mid_push_while_the_owner_appends_loses_nothing(
    private_redis: PrivateRedis, tmp_path: Path
) -> None:
    owner = Spool(tmp_path, max_bytes=10**8)  # the process's own appends
    drainer = Spool(tmp_path, max_bytes=10**8)  # its drain thread, or `spool drain`
    for n in range(500):
        owner.append(body(n, prefix="before-"))
    appended_during: list[str] = []
    ready, go = threading.Event(), threading.Event()

    def owner_thread() -> None:
        ready.wait(30)
        for n in range(300):
            owner.append(body(n, prefix="during-"))
            appended_during.append(f"during-{n}")
        go.set()

    thread = threading.Thread(target=owner_thread)
    thread.start()

    def let_the_owner_append() -> None:
        ready.set()
        assert go.wait(30)

    client = redis.Redis.from_url(private_redis.url, socket_timeout=2, socket_connect_timeout=2)
    store = RecordStore(client, Keys("spool.flap", "spool-f"))
    with pytest.raises(redis.ConnectionError):
        drainer.drain(StopsRedisMidPush(store, private_redis, let_the_owner_append))
    thread.join(30)
    private_redis.start()
    pushed = owner.drain(store)
    accepted = {f"before-{n}" for n in range(500)} | set(appended_during)
    in_redis = queued_ids(client, "spool.flap")
    assert set(in_redis) == accepted and pushed == 800  # 0 lost
    assert owner.status().records == 0


def _fill_disk_in_child(settings_json: str, limit_bytes: int, out) -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))
    track = track_of(create_app(Settings.model_validate_json(settings_json)))
    accepted: list[str] = []
    error = ""
    for n in range(100_000):
        try:
            accepted.append(
                track.delay("a::b", {"n": n, "pad": "x" * 200}, response_id=f"df{n}").id
            )
        except Exception as exc:  # what the caller of track.delay sees
            error = f"{type(exc).__name__}: {exc}"
            break
    out.send((accepted, error))


def test_a_full_disk_raises_our_error_and_keeps_what_was_spooled(
    real_redis: redis.Redis, tmp_path: Path
) -> None:
    down = Settings(
        broker_url=f"redis://127.0.0.1:{free_port()}/0",
        spool_dir=tmp_path / "spool",
        publish_timeout_s=0.2,
        queue="spool.disk",
        key_prefix="spool-d",
    )
    context = multiprocessing.get_context("fork")
    parent_end, child_end = context.Pipe()
    child = context.Process(
        target=_fill_disk_in_child, args=(down.model_dump_json(), 2 * 1024 * 1024, child_end)
    )
    child.start()
    accepted, error = parent_end.recv()
    child.join(60)
    assert error.startswith("SpoolWriteError") and "AICM_SPOOL_DIR" in error, error
    assert len(accepted) > 100  # the WAL takes about two 4 KiB pages a record
    up = down.model_copy(update={"broker_url": TEST_REDIS_URL})
    spool = Spool.for_settings(up)
    assert spool.drain(RecordStore(real_redis, Keys(up.queue, up.key_prefix))) == len(accepted)
    assert sorted(queued_ids(real_redis, "spool.disk")) == sorted(accepted)  # 0 lost


KILLED_PRODUCER = """
import sys
import tempfile
from aicm_tasks import create_app
from aicm_tasks.settings import Settings
track = create_app(Settings.model_validate_json(sys.argv[1])).tasks["aicm_tasks.track"]
n = 0
while True:
    rid = track.delay("a::b", {"n": n}, response_id=f"k{n}").id
    sys.stdout.write(rid + "\\n"); sys.stdout.flush()  # only after track.delay returned
    n += 1
"""


def test_a_producer_sigkilled_mid_append_loses_nothing_it_was_told_was_kept(
    real_redis: redis.Redis, tmp_path: Path
) -> None:
    down = Settings(
        broker_url=f"redis://127.0.0.1:{free_port()}/0",
        spool_dir=tmp_path / "spool",
        publish_timeout_s=0.2,
        queue="spool.kill",
        key_prefix="spool-k",
    )
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED_PRODUCER, down.model_dump_json()], stdout=subprocess.PIPE
    )
    assert child.stdout is not None
    told: list[str] = []
    while len(told) < 1500:
        line = child.stdout.readline()
        assert line, "the producer stopped"
        told.append(line.decode().strip())
    os.kill(child.pid, signal.SIGKILL)  # mid-loop: likely inside an append
    child.wait(10)
    told += [line.decode().strip() for line in child.stdout.read().splitlines()]
    spool = Spool.for_settings(down)
    spool.drain(RecordStore(real_redis, Keys(down.queue, down.key_prefix)))
    in_redis = set(queued_ids(real_redis, "spool.kill"))
    assert set(told) <= in_redis  # every record it was told was kept: 0 lost
    assert in_redis <= {f"k{n}" for n in range(len(in_redis) + 1)}


NOBODY = 65534


def _publish_as_nobody(track, redis_url: str, out) -> None:
    """In a forked child turned into another user: publish with the broker down, drain."""
    os.setgid(NOBODY)
    os.setuid(NOBODY)
    warnings: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            warnings.append(record.getMessage())

    logging.getLogger("aicm_tasks").addHandler(Keep(logging.WARNING))
    try:
        ids = [track.delay("a::b", {"n": n}, response_id=f"nobody{n}").id for n in range(20)]
        spool = spool_of(track)
        status = spool.status()
        settings = track.publisher.settings
        store = RecordStore(
            redis.Redis.from_url(redis_url), Keys(settings.queue, settings.key_prefix)
        )
        out.send(
            {
                "ids": ids,
                "spooled": status.records,
                "skipped": status.skipped,
                "pushed": spool.drain(store),
                "warnings": warnings,
            }
        )
    except Exception as exc:  # reported to the test, which fails with it
        out.send({"error": f"{type(exc).__name__}: {exc}", "warnings": warnings})


def test_a_foreign_file_in_the_spool_dir_blocks_nothing(
    real_redis: redis.Redis, request: pytest.FixtureRequest
) -> None:
    """Issue 11, item 9a: another user's file made the first track.delay raise."""
    if os.getuid() != 0:
        pytest.skip("needs root to turn a child into another user")
    # Outside tmp_path, whose parents only root may enter.
    spool_dir = Path(tempfile.mkdtemp(prefix="aicm-foreign-spool-"))
    os.chmod(spool_dir, 0o1777)
    request.addfinalizer(lambda: shutil.rmtree(spool_dir, ignore_errors=True))
    # Root's files, unreadable to the child: a spool database and an old-format file.
    Spool(spool_dir, max_bytes=10**6).append(body(2, prefix="root-"))
    foreign = spool_dir / f"{socket.gethostname()}-1-aaaa.spool"
    foreign.write_bytes(body(1, prefix="root-") + b"\n")
    os.chmod(foreign, 0o600)
    down = Settings(
        broker_url=f"redis://127.0.0.1:{free_port()}/0",
        spool_dir=spool_dir,
        publish_timeout_s=0.2,
        queue="spool.foreign",
        key_prefix="spool-x",
    )
    track = track_of(create_app(down))
    context = multiprocessing.get_context("fork")
    parent_end, child_end = context.Pipe()
    child = context.Process(target=_publish_as_nobody, args=(track, TEST_REDIS_URL, child_end))
    child.start()
    figures = parent_end.recv()
    child.join(60)
    assert "error" not in figures, figures
    assert figures["spooled"] == 20 and figures["pushed"] == 20 and figures["skipped"] >= 2
    assert sorted(queued_ids(real_redis, "spool.foreign")) == sorted(figures["ids"])
    assert any("skipped" in w and foreign.name in w for w in figures["warnings"]), figures
    assert foreign.exists()  # left alone by the child
    # Root's own spool is whole: its record, and its old file imported now.
    assert Spool(spool_dir, max_bytes=10**6).status().records == 2


def test_countdown_and_eta_records_keep_their_due_time_through_the_spool(
    private_redis: PrivateRedis, tmp_path: Path
) -> None:
    settings = Settings(
        broker_url=private_redis.url,
        spool_dir=tmp_path / "spool",
        publish_timeout_s=0.2,
        queue="spool.due",
        key_prefix="spool-due",
    )
    track = track_of(create_app(settings))
    private_redis.stop()
    eta = datetime.now(timezone.utc) + timedelta(hours=2)
    before = time.time()
    track.apply_async(("a::b", {"n": 1}), {"response_id": "cd-1"}, countdown=3600)
    after = time.time()
    track.apply_async(("a::b", {"n": 2}), {"response_id": "eta-1"}, eta=eta)
    track.delay("a::b", {"n": 3}, response_id="now-1")
    spool = spool_of(track)
    spool.stop_drainer()
    assert spool.status().records == 3
    private_redis.start()
    assert spool.drain(track.publisher.target) == 3
    client = redis.Redis.from_url(private_redis.url)
    # bytes: redis-py types a reply as bytes | str, whatever decode_responses says.
    due = cast(
        list[tuple[bytes, float]], client.zrange("spool-due:scheduled", 0, -1, withscores=True)
    )
    scheduled = {json.loads(m)["response_id"]: score for m, score in due}
    assert set(scheduled) == {"cd-1", "eta-1"}
    assert before + 3600 <= scheduled["cd-1"] <= after + 3600
    assert scheduled["eta-1"] == eta.timestamp()
    assert queued_ids(client, "spool.due") == ["now-1"]


def test_a_drainer_of_another_queue_never_takes_this_queues_records(
    pipeline_factory, private_redis: PrivateRedis, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 11, item 8: in one process, an app of an earlier test (another queue)
    kept its drain thread; after a Redis restart with AOF it pushed this test's
    spooled records into its own queue, and they were lost to this pipeline."""
    stale: Pipeline = pipeline_factory(broker_url=private_redis.url)
    pipeline: Pipeline = pipeline_factory(broker_url=private_redis.url)
    assert stale.settings.spool_dir == pipeline.settings.spool_dir  # as in one test session
    pipeline.start_worker()
    ids = [
        pipeline.track.delay("openai::gpt-4o-mini", {"n": n}, response_id=f"up{n}").id
        for n in range(200)
    ]
    private_redis.stop()
    stale.track.delay("openai::gpt-4o-mini", {"n": 0}, response_id="stale-0")
    ids += [
        pipeline.track.delay("openai::gpt-4o-mini", {"n": n}, response_id=f"dn{n}").id
        for n in range(1800)
    ]
    spool_of(pipeline.track).stop_drainer()  # this test says who drains first
    private_redis.start()  # loads its AOF
    restarted = time.monotonic()
    spool_of(stale.track).drain(stale.track.publisher.target)  # what its thread does
    stale_queue = queued_ids(stale.client, stale.settings.queue)
    assert stale_queue == ["stale-0"]
    spool_of(pipeline.track).drain(pipeline.track.publisher.target)
    pipeline.wait_drained(timeout_s=180)
    result = account(
        pipeline,
        "spool of two queues, redis restart (AOF)",
        set(ids),
        recovery_s=time.monotonic() - restarted,
    )
    assert result.lost == 0 and result.published == 2000 and result.delivered == 2000
    caplog.clear()
    logging.getLogger(__name__).info("accounting %s", result)
