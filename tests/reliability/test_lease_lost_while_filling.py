"""The attacker takes a live worker's batch back while it fills, again and again:
every record is still delivered, once, by that same worker, and nothing is left
in a batch key.

What was suspected (a worker that stops gathering after a lost lease, records
left in a key nobody returns) would show here as a timeout or a lost record.
"""

from __future__ import annotations

from pathlib import Path
from typing import cast

from aicm_tasks.devtools.processes import wait_until
from tests.support.accounting import account
from tests.support.pipeline import Pipeline, in_background, publish_paced

#: Times the attacker takes a filling batch back.
RECLAIMS = 5


def consumer_of(pipeline: Pipeline, pid: int) -> str:
    """The lease name of the worker with ``pid`` (hostname:pid:nonce)."""
    for member in cast(list[bytes], pipeline.client.zrange(pipeline.store.keys.consumers, 0, -1)):
        if f":{pid}:" in member.decode():
            return member.decode()
    raise AssertionError(f"no lease for pid {pid}")


def filling_batches(pipeline: Pipeline, consumer: str) -> list[bytes]:
    """The worker's registered batches, when one of them holds a record."""
    batches = sorted(cast(set[bytes], pipeline.client.smembers(pipeline.store.keys.held(consumer))))
    return batches if any(pipeline.client.llen(b) for b in batches) else []


def reclaim(pipeline: Pipeline, consumer: str, batches: list[bytes]) -> int:
    """What another worker does after this one paused past its lease: the lease
    lapses and RECLAIM runs in one transaction, so no renewal slips in between.
    Returns the records moved back, -1 when the held set changed meanwhile."""
    keys = pipeline.store.keys
    with pipeline.client.pipeline(transaction=True) as pipe:
        pipe.zadd(keys.consumers, {consumer: 0})
        pipeline.store._reclaim(
            keys=[keys.consumers, keys.queue, keys.held(consumer), *batches],
            args=[consumer],
            client=pipe,
        )
        return int(pipe.execute()[1])


def test_batches_reclaimed_while_they_fill_are_delivered_once_by_the_same_worker(
    pipeline: Pipeline,
) -> None:
    # A flush interval of 10 s: a batch fills from the trickle for that long,
    # so each reclaim lands on a batch still filling, never on one being posted.
    worker = pipeline.start_worker(AICM_FLUSH_INTERVAL_S="10")
    consumer = consumer_of(pipeline, worker.pid)
    producer, ids = in_background(publish_paced, pipeline, 300, 30, "fill")
    moved = 0
    for n in range(RECLAIMS):
        while True:
            wait_until(
                lambda: filling_batches(pipeline, consumer),
                30,
                f"filling batch {n}",
                interval_s=0.01,
            )
            taken = reclaim(pipeline, consumer, filling_batches(pipeline, consumer))
            if taken > 0:
                moved += taken
                break
    producer.join()
    pipeline.wait_settled(300, timeout_s=120)
    pipeline.wait_drained()
    result = account(pipeline, f"live batch reclaimed while it filled x{RECLAIMS}", set(ids))
    log = "\n".join(p.read_text(errors="replace") for p in Path(pipeline.log_dir).glob("*.log"))
    assert result.lost == 0 and result.delivered == 300 and result.dead_lettered == 0, log[-6000:]
    # Fenced batches are never sent: nothing reached the server twice.
    assert result.duplicates == 0, log[-6000:]
    assert log.count("reclaimed while it filled") == RECLAIMS, log[-6000:]
    assert moved >= RECLAIMS
    keys = pipeline.store.keys
    assert all(
        pipeline.client.llen(k) == 0
        for k in pipeline.client.scan_iter(match=keys.batch_prefix + "*")
    )
    assert worker.poll() is None
