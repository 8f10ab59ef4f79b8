"""A real Redis Cluster on loopback: 3 primaries with a replica each.

Six ``redis-server --cluster-enabled yes`` processes on free ports (each
checked to be answered by its own process: a port another test run took in
the meantime is left to it and the node moves to other ports), joined by
``redis-cli --cluster create ... --cluster-replicas 1 --cluster-yes``, as an
operator would build one; a test may kill a primary and watch its replica take
over. Used by the test fixture ``redis_cluster`` (tests/support/shards.py) and
by the benchmark's ``cluster`` scenario. Starting one takes about 3 s here.
Needs ``redis-server`` and ``redis-cli`` (``.ci/run`` installs them).
"""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import redis
from redis.cluster import ClusterNode as Seed
from redis.cluster import RedisCluster

from aicm_tasks.devtools.processes import stop_process, wait_until
from aicm_tasks.errors import LocalRedisError, PortTakenError

#: Redis Cluster's bus listens on the client port + 10000, so both must be free.
BUS_PORT_OFFSET = 10000
#: Nodes of the local cluster: 3 primaries and one replica of each.
NODES = 6
#: How long a node has to answer after its start, in seconds.
NODE_START_S = 10.0
#: Ports tried for one node before giving up (another process took the first).
PORT_ATTEMPTS = 5


#: ``cluster-node-timeout`` of the local nodes, in ms: a replica takes over within
#: a couple of seconds of its primary's death, so a test does not wait the
#: default 15 s.
NODE_TIMEOUT_MS = 1500


def free_cluster_port(taken: set[int]) -> int:
    """A port whose bus port (port + 10000) is free as well, below 55536."""
    for _ in range(1000):
        port = random.randint(20000, 45000)
        if port in taken or port + BUS_PORT_OFFSET in taken:
            continue
        if all(_is_free(p) for p in (port, port + BUS_PORT_OFFSET)):
            return port
    raise LocalRedisError("no free pair of ports for a Redis Cluster node")


def _is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise LocalRedisError(f"{name} is not installed: no local Redis Cluster")
    return path


@dataclass
class ClusterNode:
    """One ``redis-server --cluster-enabled yes`` process on 127.0.0.1:``port``."""

    port: int
    data_dir: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def client(self) -> redis.Redis:
        """A plain client of this node alone (INFO, ROLE, CLUSTER ...)."""
        return redis.Redis(port=self.port, socket_timeout=2)

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, appendonly: bool) -> None:
        """Start the process and wait until it answers PING."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [
            _binary("redis-server"),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--cluster-enabled", "yes",
            "--cluster-config-file", str(self.data_dir / "nodes.conf"),
            "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
            "--save", "",
            "--appendonly", "yes" if appendonly else "no",
            "--maxmemory-policy", "noeviction",
            "--dir", str(self.data_dir),
        ]  # fmt: skip
        with open(self.data_dir / "redis.log", "ab") as log:
            self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        self._wait_answering()

    def _wait_answering(self) -> None:
        """Until this node's own process answers on its port.

        The port was free when chosen, but another process (a test run beside
        this one starting its own cluster) may take it, or its bus port, first:
        our redis-server then exits, or, worse, another Redis answers PING on
        the port and would be joined to this cluster. Raises
        :class:`PortTakenError` in both cases (the caller picks other ports)."""
        assert self.process is not None
        deadline = time.monotonic() + NODE_START_S
        while True:
            if self.process.poll() is not None:
                self.process = None
                raise PortTakenError(
                    f"redis-server on port {self.port} exited at start (port or bus port "
                    f"taken?): see {self.data_dir / 'redis.log'}"
                )
            pid = self._answering_pid()
            if pid == self.process.pid:
                return
            if pid is not None:
                self.kill()
                raise PortTakenError(f"another Redis (pid {pid}) answers on port {self.port}")
            if time.monotonic() > deadline:
                self.kill()
                raise LocalRedisError(f"cluster node {self.port} did not answer in {NODE_START_S}s")
            time.sleep(0.05)

    def _answering_pid(self) -> int | None:
        """The process id of the Redis answering on this port, None when none does."""
        client = redis.Redis(port=self.port, socket_timeout=2, socket_connect_timeout=2)
        try:
            return int(client.info("server")["process_id"])
        except redis.RedisError:
            return None
        finally:
            client.close()

    def kill(self) -> None:
        """SIGKILL: what a crashed host does (no AOF flush beyond what is written)."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def stop(self) -> None:
        """SIGTERM and wait."""
        if self.process is not None:
            stop_process(self.process)
            self.process = None


@dataclass
class LocalRedisCluster:
    """Three primaries, each with one replica, on 127.0.0.1 (AOF on unless told)."""

    data_dir: Path
    appendonly: bool = True
    nodes: list[ClusterNode] = field(default_factory=list)

    def start(self) -> None:
        """Start six nodes, create the cluster, wait until every slot is served and
        every replica has synced."""
        taken: set[int] = set()
        for n in range(NODES):
            for attempt in range(PORT_ATTEMPTS):
                port = free_cluster_port(taken)
                taken |= {port, port + BUS_PORT_OFFSET}
                node = ClusterNode(port, self.data_dir / f"node-{n}-{attempt}")
                try:
                    node.start(self.appendonly)
                except PortTakenError:
                    if attempt == PORT_ATTEMPTS - 1:
                        self.stop()
                        raise
                    continue
                self.nodes.append(node)
                break
        subprocess.run(
            [_binary("redis-cli"), "--cluster", "create",
             *(f"127.0.0.1:{n.port}" for n in self.nodes),
             "--cluster-replicas", "1", "--cluster-yes"],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        wait_until(self.healthy, 30, "the cluster to cover every slot")
        # A replica that has not finished its first sync refuses to fail over
        # ("disconnected from master for longer than allowed"): a primary killed
        # before that would leave its slots unserved.
        wait_until(self.replicas_in_sync, 30, "every replica's first sync")

    def replicas_in_sync(self) -> bool:
        """Every live replica's link to its primary is up."""
        for node in self.nodes:
            if node.process is None:
                continue
            info = node.client.info("replication")
            if info.get("role") == "slave" and info.get("master_link_status") != "up":
                return False
        return True

    @property
    def url(self) -> str:
        """A seed URL for redis-py's cluster client (any node will do)."""
        return self.nodes[0].url

    def client(self) -> RedisCluster:
        """A cluster client seeded with every live node (one may be dead)."""
        live = [Seed("127.0.0.1", n.port) for n in self.nodes if n.process is not None]  # type: ignore[no-untyped-call]
        return RedisCluster(startup_nodes=live)

    def healthy(self) -> bool:
        """Every slot served and every live node agreeing on it."""
        for node in self.nodes:
            if node.process is None:
                continue
            info = node.client.cluster("info")
            state = info.get("cluster_state") if isinstance(info, dict) else None
            if state != "ok":
                return False
        return True

    def primaries(self) -> list[ClusterNode]:
        """The nodes serving slots now (failover changes which)."""
        primaries = []
        for node in self.nodes:
            if node.process is None:
                continue
            role = node.client.execute_command("ROLE")[0]  # type: ignore[no-untyped-call]
            if role in (b"master", "master"):
                primaries.append(node)
        return primaries

    def node_of(self, key: str) -> ClusterNode:
        """The primary that serves ``key``'s slot now."""
        client = self.client()
        try:
            slot: int = client.keyslot(key)  # type: ignore[no-untyped-call]  # unannotated
        finally:
            client.close()
        return self.node_of_slot(slot)

    def node_of_slot(self, slot: int, asked: ClusterNode | None = None) -> ClusterNode:
        """The primary that serves ``slot`` now, as ``asked`` (else the first
        primary) sees it."""
        # Every node's CLUSTER SLOTS lists the whole map: each range with the
        # primary serving it (host, port, id) first.
        for node in [asked] if asked else self.primaries():
            for start, end, primary, *_ in node.client.cluster("slots"):
                if start <= slot <= end:
                    port = int(primary[1])
                    return next(n for n in self.nodes if n.port == port)
        raise LookupError(f"no live primary serves slot {slot}")

    def move_slot(
        self, slot: int, target: ClusterNode, halfway: Callable[[], None] = lambda: None
    ) -> None:
        """Move ``slot`` and its keys to the primary ``target`` while clients use
        it, as ``redis-cli --cluster reshard`` does: IMPORTING on the target,
        MIGRATING on the source, MIGRATE the keys, then SETSLOT NODE on every
        primary. ``halfway`` runs once the keys are on the target while the
        source still owns the slot: it answers ASK for them meanwhile."""
        source = self.node_of_slot(slot)
        source_id, target_id = self.node_id(source), self.node_id(target)
        # redis-py leaves execute_command unannotated.
        run = [node.client.execute_command for node in (target, source)]
        run[0]("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)  # type: ignore[no-untyped-call]
        run[1]("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)  # type: ignore[no-untyped-call]
        while keys := run[1]("CLUSTER", "GETKEYSINSLOT", slot, 100):  # type: ignore[no-untyped-call]
            run[1]("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *keys)  # type: ignore[no-untyped-call]
        halfway()
        # The target first, then the source (which then answers MOVED), then the rest.
        others = [p for p in self.primaries() if p not in (source, target)]
        for node in (target, source, *others):
            node.client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)  # type: ignore[no-untyped-call]

        def agreed() -> bool:
            live = [n for n in self.nodes if n.process is not None]
            return all(self.node_of_slot(slot, asked=n) is target for n in live)

        wait_until(agreed, 30, f"every node to see slot {slot} on {target.port}")

    def node_id(self, node: ClusterNode) -> str:
        """The node's cluster id (CLUSTER MYID)."""
        answer = node.client.execute_command("CLUSTER", "MYID")  # type: ignore[no-untyped-call]
        return answer.decode() if isinstance(answer, bytes) else str(answer)

    def replica_of(self, primary: ClusterNode) -> ClusterNode:
        """The live node replicating ``primary`` now."""
        for node in self.nodes:
            if node.process is None or node is primary:
                continue
            info = node.client.info("replication")
            if info.get("role") == "slave" and int(info.get("master_port", 0)) == primary.port:
                return node
        raise LookupError(f"no live replica of {primary.port}")

    def wait_failover(self, dead: ClusterNode, timeout_s: float = 30) -> None:
        """Until a replica has taken over ``dead``'s slots and the cluster is ok.

        Right after the kill the others still call the cluster ok (they notice
        after ``cluster-node-timeout``): wait until no live node names the dead
        one as serving a slot."""

        def replaced() -> bool:
            for node in self.nodes:
                if node.process is None:
                    continue
                for _start, _end, primary, *_ in node.client.cluster("slots"):
                    if int(primary[1]) == dead.port:
                        return False
            return self.healthy()

        wait_until(replaced, timeout_s, f"a replica to replace {dead.port}")

    def stop(self) -> None:
        """Stop every node."""
        for node in self.nodes:
            node.stop()


def wait_started(cluster: LocalRedisCluster) -> float:
    """Start ``cluster``; returns how long it took (seconds)."""
    started = time.monotonic()
    cluster.start()
    return time.monotonic() - started
