"""The routing of a shard's publishes on Redis Cluster, off the wire: which node a
publish goes to, when the slot map is read again, what is retried and what
propagates. The same paths over a real cluster (a slot moved, a primary killed):
tests/integration/test_cluster_routing.py."""

from __future__ import annotations

from typing import Any

import pytest
import redis
from redis.exceptions import (
    AskError,
    ClusterDownError,
    MovedError,
    ReadOnlyError,
    ResponseError,
    SlotNotCoveredError,
    TryAgainError,
)

from aicm_tasks.broker.cluster_records import SlotRoute

SLOT = 4242


class FakePool:
    def __init__(self, port: int) -> None:
        self.connection_kwargs = {"host": "127.0.0.1", "port": port}
        self.idle_dropped = 0

    def disconnect(self, inuse_connections: bool = True) -> None:
        assert inuse_connections is False, "connections in use by other threads are theirs"
        self.idle_dropped += 1


class FakeServer:
    """One node's client: answers LPUSH, or raises the next of ``failures``."""

    def __init__(self, port: int, *failures: redis.RedisError) -> None:
        self.port = port
        self.connection_pool = FakePool(port)
        self.failures = list(failures)
        self.pushed: list[bytes] = []

    def lpush(self, key: str, message: bytes) -> int:
        if self.failures:
            raise self.failures.pop(0)
        self.pushed.append(message)
        return len(self.pushed)


class FakeNodes:
    """The cluster client's slot map: ``primary`` until a refresh makes it ``next``."""

    def __init__(self, primary: FakeServer | None, next_primary: FakeServer | None = None) -> None:
        self.primary = primary
        self.next_primary = next_primary or primary
        self.refreshed: list[str | None] = []

    def get_node_from_slot(self, slot: int) -> FakeServer:
        assert slot == SLOT
        if self.primary is None:
            raise SlotNotCoveredError(f'Slot "{slot}" not covered by the cluster.')
        return self.primary

    def initialize(self, last_failed_node_name: str | None = None) -> None:
        self.refreshed.append(last_failed_node_name)
        self.primary = self.next_primary


class FakeCluster:
    """redis-py's cluster client, as far as a route uses it; its own LPUSH stands
    for its full dispatch (which follows MOVED and ASK)."""

    def __init__(self, nodes: FakeNodes) -> None:
        self.nodes_manager = nodes
        self.pushed: list[bytes] = []

    def keyslot(self, key: str) -> int:
        return SLOT

    def get_redis_connection(self, node: FakeServer) -> FakeServer:
        return node

    def lpush(self, key: str, message: bytes) -> int:
        self.pushed.append(message)
        return len(self.pushed)


def route_over(primary: FakeServer | None, next_primary: FakeServer | None = None) -> SlotRoute:
    cluster: Any = FakeCluster(FakeNodes(primary, next_primary))
    return SlotRoute(cluster, "{aicm:0}")


def push(route: SlotRoute, message: bytes = b"m") -> Any:
    return route.run(lambda client: client.lpush("{aicm:0}", message))


def test_a_publish_goes_to_the_primary_the_slot_map_names_and_nowhere_else() -> None:
    primary = FakeServer(7000)
    route = route_over(primary)
    push(route, b"a")
    push(route, b"b")
    assert primary.pushed == [b"a", b"b"]
    assert route.cluster.pushed == []  # type: ignore[attr-defined]
    assert route.cluster.nodes_manager.refreshed == []  # type: ignore[attr-defined]


def test_a_dead_primary_makes_the_map_be_read_again_and_the_publish_go_to_its_successor() -> None:
    dead = FakeServer(7000, redis.ConnectionError("Connection refused"))
    promoted = FakeServer(7003)
    route = route_over(dead, promoted)
    push(route)
    assert promoted.pushed == [b"m"]
    assert dead.pushed == []
    # The dead node is asked for the map last; its idle connections are dropped.
    assert route.cluster.nodes_manager.refreshed == ["127.0.0.1:7000"]  # type: ignore[attr-defined]
    assert dead.connection_pool.idle_dropped == 1
    # The next publish goes to the successor at once.
    push(route, b"n")
    assert promoted.pushed == [b"m", b"n"]


def test_a_stale_pooled_connection_is_retried_once_on_a_fresh_one() -> None:
    restarted = FakeServer(7000, redis.ConnectionError("Connection reset by peer"))
    route = route_over(restarted)
    push(route)
    assert restarted.pushed == [b"m"]
    assert restarted.connection_pool.idle_dropped == 1


@pytest.mark.parametrize(
    "failure",
    [
        redis.TimeoutError("Timeout reading from socket"),
        ReadOnlyError("You can't write against a read only replica."),
        ClusterDownError("The cluster is down"),
    ],
    ids=["timeout", "readonly", "clusterdown"],
)
def test_a_timeout_or_a_refused_write_is_retried_once_after_reading_the_map(
    failure: redis.RedisError,
) -> None:
    old, new = FakeServer(7000, failure), FakeServer(7001)
    route = route_over(old, new)
    push(route)
    assert new.pushed == [b"m"]
    assert route.cluster.nodes_manager.refreshed == ["127.0.0.1:7000"]  # type: ignore[attr-defined]
    # Only a lost connection makes the idle ones suspect.
    assert old.connection_pool.idle_dropped == int(isinstance(failure, redis.TimeoutError))


@pytest.mark.parametrize(
    "failure",
    [
        MovedError(f"{SLOT} 127.0.0.1:7001"),
        AskError(f"{SLOT} 127.0.0.1:7001"),
        TryAgainError("Multiple keys request during rehashing of slot"),
    ],
    ids=["moved", "ask", "tryagain"],
)
def test_a_redirection_is_followed_by_the_cluster_client(failure: redis.RedisError) -> None:
    source = FakeServer(7000, failure)
    route = route_over(source)
    push(route)
    assert route.cluster.pushed == [b"m"]  # type: ignore[attr-defined]
    assert source.pushed == []
    # The cluster client records a MOVED in its own map; no extra CLUSTER SLOTS here.
    assert route.cluster.nodes_manager.refreshed == []  # type: ignore[attr-defined]


def test_a_second_failure_propagates_for_the_producer_to_try_another_shard() -> None:
    dead = FakeServer(7000, redis.ConnectionError("refused"), redis.ConnectionError("refused"))
    route = route_over(dead)  # mid-failover: the map still names the dead node
    with pytest.raises(redis.ConnectionError, match="refused"):
        push(route)
    assert dead.pushed == []
    assert route.cluster.nodes_manager.refreshed == ["127.0.0.1:7000"]  # type: ignore[attr-defined]


def test_an_answer_that_is_not_about_routing_propagates_without_a_retry() -> None:
    full = FakeServer(7000, ResponseError("OOM command not allowed when used memory > 'maxmemory'"))
    route = route_over(full)
    with pytest.raises(ResponseError, match="OOM"):
        push(route)
    assert full.pushed == []
    assert route.cluster.pushed == []  # type: ignore[attr-defined]
    assert route.cluster.nodes_manager.refreshed == []  # type: ignore[attr-defined]


def test_a_slot_no_node_serves_is_a_shard_that_does_not_answer() -> None:
    route = route_over(None)
    # A ConnectionError, which the producer handles (another shard, the spool);
    # redis-py's SlotNotCoveredError is not a RedisError.
    with pytest.raises(redis.ConnectionError, match=f"slot {SLOT}"):
        push(route)
