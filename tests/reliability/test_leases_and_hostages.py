"""The attacker's faults on the worker side: hosts' clocks, paused and killed
workers, orphaned batch keys, a server that fails on one record, records the
worker cannot read. Every scenario ends with exact accounting."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from aicm_tasks.broker.dead_letters import Selection
from aicm_tasks.devtools.processes import wait_until
from aicm_tasks.producer.record import build_record
from tests.support.accounting import account
from tests.support.faults import FaultProxy, hold
from tests.support.pipeline import Pipeline, in_background, publish, publish_paced

#: A worker started with this on PYTHONPATH runs with AICM_TEST_CLOCK_SKEW_S
#: added to its wall clock (tests/support/skewed_clock/sitecustomize.py).
SKEWED_CLOCK = str(Path(__file__).resolve().parent.parent / "support" / "skewed_clock")


def skewed(skew_s: float) -> dict[str, str]:
    path = os.environ.get("PYTHONPATH")
    return {
        "PYTHONPATH": SKEWED_CLOCK + (os.pathsep + path if path else ""),
        "AICM_TEST_CLOCK_SKEW_S": str(skew_s),
    }


def batch_keys(pipeline: Pipeline) -> list[bytes]:
    return list(pipeline.client.scan_iter(match=f"{pipeline.store.keys.prefix}:batch:*"))


def wait_all_settled(pipeline: Pipeline, ids: set[str], timeout_s: float = 120) -> None:
    """Until every id is at the server or in the dead-letter store."""

    def settled() -> bool:
        dead = {e["id"] for e in pipeline.dead_letters.list(Selection(all=True))}
        return not (ids - pipeline.server.response_ids() - dead)

    wait_until(settled, timeout_s, "every record delivered or dead-lettered", interval_s=0.5)


def test_a_worker_whose_clock_runs_an_hour_ahead_reclaims_nothing_live(pipeline) -> None:
    # The redelivery timeout is 3 s (FAST_WORKER_ENV): a clock an hour ahead,
    # as the old host-clock leases read it, saw every other lease as expired.
    pipeline.start_worker()
    pipeline.start_worker(**skewed(3600))
    pipeline.start_worker(**skewed(-3600))
    ids = publish_paced(pipeline, 4000, 1000, prefix="skew")
    pipeline.wait_settled(4000)
    pipeline.wait_drained()
    result = account(pipeline, "clocks off by +-1 h", set(ids))
    assert result.lost == 0 and result.delivered == 4000
    assert result.duplicates == 0, pipeline.logs()
    assert "reclaimed" not in pipeline.logs()


def test_skewed_workers_paused_past_their_lease_and_killed_lose_nothing(pipeline) -> None:
    steady = pipeline.start_worker()
    victim = pipeline.start_worker(**skewed(3600))
    producer, ids = in_background(publish_paced, pipeline, 12_000, 1500, "pause")
    for _ in range(4):
        hold(1.5)
        # Paused past its 3 s lease: the other worker reclaims its batches...
        victim.send_signal(signal.SIGSTOP)
        hold(4.5)
        # ...then it resumes (its blocked BLMOVE and polls race the reclaim) and
        # is killed right after, leaving whatever it moved where it moved it.
        victim.send_signal(signal.SIGCONT)
        hold(0.05)
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
        victim = pipeline.start_worker(**skewed(3600))
    producer.join()
    try:
        wait_all_settled(pipeline, set(ids), timeout_s=60)
    except TimeoutError:
        missing = set(ids) - pipeline.server.response_ids()
        keys = {k: pipeline.client.llen(k) for k in batch_keys(pipeline)}
        raise AssertionError(
            f"missing {len(missing)} e.g. {sorted(missing)[:5]}; depth {pipeline.store.depth()}; "
            f"batch keys {keys}; stats {pipeline.store.stats()}\n{pipeline.logs()[-6000:]}"
        ) from None
    pipeline.wait_drained()
    result = account(pipeline, "skewed worker paused past its lease, then killed x4", set(ids))
    assert result.lost == 0 and result.delivered == 12_000, pipeline.logs()
    assert all(pipeline.client.llen(key) == 0 for key in batch_keys(pipeline))
    assert steady.poll() is None


def test_batch_keys_no_lease_covers_are_returned_and_delivered(pipeline) -> None:
    # Whatever left them there (a BLMOVE into a reclaimed batch, then a kill; a
    # bug; an operator's restore), records in batch keys no live lease covers
    # are found by the sweep a worker runs at start and every 30 s.
    keys = pipeline.store.keys
    records = [build_record("openai::gpt-4o-mini", {"input_tokens": n}) for n in range(300)]
    orphans = {
        keys.batch("gone-host:1:dead", 0): records[:100],  # its worker never had a lease
        keys.batch("gone-host:2:dead", 5): records[100:200],  # held, lease long expired
        keys.batch("gone-host:3:dead", 9): records[200:],  # live lease, not in its held set
    }
    now = pipeline.store.server_time()
    for key, batch in orphans.items():
        pipeline.client.rpush(key, *(record.message for record in batch))
    pipeline.client.sadd(keys.held("gone-host:2:dead"), keys.batch("gone-host:2:dead", 5))
    pipeline.client.zadd(keys.consumers, {"gone-host:2:dead": now - 3600})
    pipeline.client.zadd(keys.consumers, {"gone-host:3:dead": now + 3600})
    pipeline.start_worker()
    ids = {record.response_id for record in records}
    wait_all_settled(pipeline, ids, timeout_s=60)
    result = account(pipeline, "orphaned batch keys", ids)
    assert result.lost == 0 and result.delivered == 300
    assert all(pipeline.client.llen(key) == 0 for key in batch_keys(pipeline))


def test_a_server_that_answers_500_to_one_record_holds_no_batch_mate(pipeline_factory) -> None:
    probe = pipeline_factory()
    with FaultProxy(probe.server.url) as proxy:
        pipeline: Pipeline = pipeline_factory(api_base=proxy.url)
        proxy.set("crash")
        # A small retry budget: before, one poison dragged its 49 batch-mates
        # into retries_exhausted with it.
        pipeline.start_worker(AICM_BATCH_SIZE="50", AICM_MAX_RETRIES="3")
        good: list[str] = []
        poison: list[str] = []
        for n in range(2000):
            if n % 97 == 13:
                rid = f"crash{n}"
                pipeline.track.delay("crash::model", {"input_tokens": 1}, response_id=rid)
                poison.append(rid)
            else:
                good += publish(pipeline, 1, prefix=f"good{n}-")
        wait_all_settled(pipeline, set(good) | set(poison), timeout_s=120)
        pipeline.wait_drained()
        result = account(pipeline, "/track 500 for one record in ~97", set(good) | set(poison))
    dead = {e["id"]: e["reason"] for e in pipeline.dead_letters.list(Selection(all=True))}
    assert result.lost == 0
    assert set(good) <= pipeline.server.response_ids(), "a batch-mate of a poison was not delivered"
    assert dead == {rid: "retries_exhausted" for rid in poison}
    assert proxy.state.counts["crash"] > 0


def test_records_the_worker_cannot_read_end_in_the_dlq_and_free_their_batch(pipeline) -> None:
    keys = pipeline.store.keys
    deep = 100_000  # past every supported Python's parser limit
    unreadable = [
        b'{"payload":' + b"[" * deep + b"]" * deep + b',"response_id":"deep","service_key":"a::b"}',
        b'{"retries":1}\n{"payload":' + b"{" * 10 + b"}" * 10 + b"}",
        b"\xff\xfe not even utf-8",
        b'{"attempts":"many","retries":{"x":1}}\n' + b"{not json",
        b'{"response_id":"deep-fast","service_key":"openai::gpt-4o-mini","timestamp":"1","payload":'
        + b"[" * deep
        + b"]" * deep
        + b"}",
    ]
    pipeline.client.lpush(keys.queue, *unreadable)
    good = publish(pipeline, 500, prefix="fine")
    pipeline.start_worker(AICM_BATCH_SIZE="100", AICM_MAX_RETRIES="2")
    pipeline.wait_settled(500 + len(unreadable), timeout_s=60)
    pipeline.wait_drained()
    result = account(pipeline, "unreadable records among good ones", set(good))
    assert result.lost == 0 and result.delivered == 500
    entries = pipeline.dead_letters.list(Selection(all=True))
    assert len(entries) == len(unreadable)
    assert {e["reason"] for e in entries} <= {"malformed", "rejected", "error"}
    assert all(e["raw"] for e in entries if e["reason"] == "malformed")
