"""What a Redis server spent: ``INFO cpu`` and ``INFO commandstats`` before and after.

``used_cpu_sys + used_cpu_user`` is the server process's CPU time (every
thread: the event loop, replication to a replica, the cluster bus);
``commandstats`` gives calls and microseconds per command, inside the event
loop only. Since Redis 7 the commands a script runs are counted under their
own names as well as inside ``evalsha``, so their microseconds are not added
up here: each command is reported alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import redis


@dataclass(frozen=True)
class CpuSnapshot:
    """One server's CPU seconds and per-command (calls, µs) at one moment."""

    cpu_s: float
    commands: dict[str, tuple[int, int]] = field(default_factory=dict)


@dataclass(frozen=True)
class CpuSpent:
    """What one server spent between two snapshots."""

    cpu_s: float
    #: Command -> (calls, µs) spent in it.
    commands: dict[str, tuple[int, int]]

    def busiest(self, n: int = 3) -> list[tuple[str, int, int]]:
        """The ``n`` commands with the most µs: (name, calls, µs)."""
        ranked = sorted(self.commands.items(), key=lambda item: item[1][1], reverse=True)
        return [(name, calls, usec) for name, (calls, usec) in ranked[:n]]


def snapshot(client: redis.Redis) -> CpuSnapshot:
    """``INFO cpu`` and ``INFO commandstats`` of the server ``client`` talks to."""
    cpu = client.info("cpu")
    stats = client.info("commandstats")
    commands = {
        name.removeprefix("cmdstat_"): (int(entry["calls"]), int(entry["usec"]))
        for name, entry in stats.items()
    }
    return CpuSnapshot(float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"]), commands)


def spent(before: CpuSnapshot, after: CpuSnapshot) -> CpuSpent:
    """``after - before``; commands not called in between are left out."""
    commands: dict[str, tuple[int, int]] = {}
    for name, (calls, usec) in after.commands.items():
        calls0, usec0 = before.commands.get(name, (0, 0))
        if calls > calls0:
            commands[name] = (calls - calls0, usec - usec0)
    return CpuSpent(after.cpu_s - before.cpu_s, commands)
