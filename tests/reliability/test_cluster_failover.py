"""A Redis Cluster primary killed mid-run (SIGKILL), its replica promoted by the
cluster, while producers publish and workers deliver: what is lost with replica
acknowledgement off, and that nothing is with it on.

Redis replication is asynchronous: the primary answers a write before its
replica has it, so a write acknowledged before the kill may be missing on the
promoted replica. The replica (and the workers, so records wait in the queue)
are paused (SIGSTOP) for a while before the kill, as a lagging replica would
be, so the window is real rather than luck. With ``AICM_REPLICA_ACKS=1`` a publish counts only once
the replica acknowledged it (WAIT), and one that is not acknowledged in time is
published to another shard (or spooled) instead.
"""

from __future__ import annotations

import signal
import threading
import time
from typing import Any

from aicm_tasks.devtools.processes import wait_until
from tests.support.accounting import Accounting, account
from tests.support.redis_cluster import LocalRedisCluster
from tests.support.shards import ShardedPipeline, redis_cluster, sharded_factory

__all__ = ["redis_cluster", "sharded_factory"]

#: Records published per run, and how fast (records a second).
RECORDS, PER_S = 4000, 800
#: Records published while the replica and the workers are paused (a third of
#: them to the shard whose primary is then killed).
WINDOW_RECORDS = 300


def kill_a_primary_mid_run(
    cluster: LocalRedisCluster, pipeline: ShardedPipeline, scenario: str, prefix: str
) -> Accounting:
    workers = [pipeline.start_worker(), pipeline.start_worker()]
    ids: list[str] = []
    producer = threading.Thread(target=publish_live, args=(pipeline, ids, prefix), daemon=True)
    producer.start()
    wait_until(lambda: pipeline.settled() > RECORDS // 4, 120, "delivery under way")
    victim = cluster.node_of(pipeline.stores[0].keys.queue)
    replica = cluster.replica_of(victim)
    assert replica.process is not None
    # A replica that lags (load, a slow link) while records wait in the queue
    # (workers busy): both paused while the producer goes on, then the primary
    # dies and the replica, resumed within the cluster's validity window, takes
    # over without what it missed.
    paused = [replica.process, *workers]
    for process in paused:
        process.send_signal(signal.SIGSTOP)
    # Cut the replication link too: a stopped replica's socket buffer would
    # otherwise still receive the window's writes, and it would read them on
    # waking. The paused replica cannot reconnect, so they stay on the primary.
    victim.client.client_kill_filter(_type="replica")
    try:
        at_pause = len(ids)
        wait_until(lambda: len(ids) >= at_pause + WINDOW_RECORDS, 60, "records in the window")
        victim.kill()
    finally:
        for process in paused:
            process.send_signal(signal.SIGCONT)
    try:
        cluster.wait_failover(victim)
        producer.join(300)
        assert len(ids) == RECORDS
        # Whatever survived is delivered; what the promoted replica never got is lost.
        published = set(ids)
        spool = pipeline.track.publisher.spool
        assert spool is not None
        # During the failover window the whole cluster refuses writes (cluster-
        # require-full-coverage, the default), so records wait in the spool; its
        # drain thread pushes them once the cluster answers again.
        wait_until(
            lambda: (
                pipeline.server.response_ids() | dead_ids(pipeline) >= published
                or (drained(pipeline) and not spool.has_records())
            ),
            180,
            "every surviving record settled",
        )
        return account(pipeline, scenario, published, spooled=spool.status().records)
    finally:
        # The node rejoins as its former replica's replica: the cluster is whole
        # again for the next test.
        victim.start(cluster.appendonly)
        wait_until(cluster.healthy, 60, "the cluster to be whole again")
        wait_until(cluster.replicas_in_sync, 60, "the rejoined replica's sync")


def publish_live(pipeline: ShardedPipeline, ids: list[str], prefix: str) -> None:
    """RECORDS records at PER_S a second through track.delay; ``ids`` grows as it goes."""
    started = time.monotonic()
    for n in range(RECORDS):
        record = pipeline.track.delay(
            "openai::gpt-4o-mini", {"input_tokens": n}, response_id=f"{prefix}{n}"
        )
        ids.append(record.id)
        ahead_s = started + n / PER_S - time.monotonic()
        if ahead_s > 0:
            time.sleep(ahead_s)


def dead_ids(pipeline: ShardedPipeline) -> set[str]:
    from aicm_tasks.broker.dead_letters import Selection

    return {e["id"] for e in pipeline.dead_letters.list(Selection(all=True))}


def drained(pipeline: ShardedPipeline) -> bool:
    for store in pipeline.stores:
        depth = store.depth()
        if depth["queued"] or depth["scheduled"] or depth["held"]:
            return False
    return True


def test_a_primary_killed_mid_run_without_replica_acknowledgement_is_counted(
    redis_cluster: LocalRedisCluster, sharded_factory: Any
) -> None:
    pipeline: ShardedPipeline = sharded_factory(
        [f"redis://127.0.0.1:{n.port}/0" for n in redis_cluster.primaries()], cluster=True
    )
    result = kill_a_primary_mid_run(
        redis_cluster, pipeline, "cluster primary killed, acks off", "off"
    )
    # What the shard's primary took in the window and never replicated is gone
    # (about a third of WINDOW_RECORDS); the accounting table shows how many.
    assert result.published == RECORDS
    assert result.lost > 0, result
    assert result.delivered + result.dead_lettered + result.spooled + result.lost == RECORDS


def test_a_primary_killed_mid_run_with_replica_acknowledgement_loses_nothing(
    redis_cluster: LocalRedisCluster, sharded_factory: Any
) -> None:
    pipeline: ShardedPipeline = sharded_factory(
        [f"redis://127.0.0.1:{n.port}/0" for n in redis_cluster.primaries()],
        cluster=True,
        replica_acks=1,
        replica_ack_timeout_s=0.2,
    )
    result = kill_a_primary_mid_run(
        redis_cluster, pipeline, "cluster primary killed, acks on", "on"
    )
    assert result.lost == 0, result
    assert result.delivered + result.dead_lettered + result.spooled == RECORDS
