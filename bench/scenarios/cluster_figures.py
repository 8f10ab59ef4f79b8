"""The cluster scenario's figures (:mod:`bench.scenarios.cluster`), filled run by run."""

# ruff: noqa: RUF001, RUF003  (× and µ are meant)

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from bench.config import Counts
from bench.stats import Figure

#: Deployment -> label in the table.
DEPLOYMENTS = {
    "single": "one standalone Redis",
    "cluster": "3-primary Redis Cluster",
    "acks": "3-primary cluster, AICM_REPLICA_ACKS=1",
}
#: Primaries the scale-out is projected for, at one core each.
PROJECTED_PRIMARIES = (3, 6, 12)
#: How records are published, for the projection: one ``track.delay`` (one
#: LPUSH) per record, or ``track_many`` lists of 1,000 (one pipelined LPUSH).
PUBLISHED_BY = {"delay": "track.delay", "many": "track_many lists of 1,000"}


@dataclass
class Measured:
    """One run's figures for one deployment."""

    p50_us: float = 0.0
    p99_us: float = 0.0
    #: Redis CPU µs per record, one value per shard (its primary's).
    publish_cpu_us: list[float] = field(default_factory=list)
    fill_cpu_us: list[float] = field(default_factory=list)
    drain_cpu_us: list[float] = field(default_factory=list)
    #: Records the shards held beyond those published (published twice, see
    #: ``check_carried``).
    published_twice: int = 0
    ready_all: float = 0.0
    steady: float = 0.0
    also: dict[str, float] = field(default_factory=dict)


class Figures:
    """The scenario's figures, filled run by run."""

    def __init__(self, counts: Counts) -> None:
        self.by: dict[str, dict[str, Figure]] = {}
        for name, label in DEPLOYMENTS.items():
            self.by[name] = {
                "p50": Figure(f"cluster.{name}.p50_us", f"track.delay p50, {label}", "µs/call"),
                "p99": Figure(f"cluster.{name}.p99_us", f"track.delay p99, {label}", "µs/call"),
                "drain": Figure(f"cluster.{name}.drain", f"drain, {label}, ready→all", "records/s"),
                "publish_cpu": Figure(
                    f"cluster.{name}.publish_cpu_us",
                    f"Redis CPU per published record per shard, {label}",
                    "µs/record",
                ),
                "fill_cpu": Figure(
                    f"cluster.{name}.fill_cpu_us",
                    f"Redis CPU per record filled by track_many per shard, {label}",
                    "µs/record",
                ),
                "drain_cpu": Figure(
                    f"cluster.{name}.drain_cpu_us",
                    f"Redis CPU per drained record per shard, {label}",
                    "µs/record",
                ),
            }
            for key in ("p50", "p99", "publish_cpu"):
                self.by[name][key].note = f"{counts.publish_calls:,} timed calls a run"
            for key in ("drain", "fill_cpu", "drain_cpu"):
                self.by[name][key].note = f"{counts.cluster_drain:,} records, 1 worker (defaults)"
        self.acks_publish = Figure(
            "cluster.acks_cost.publish", "replica acks: track.delay p50, on ÷ off", "×"
        )
        self.acks_drain = Figure("cluster.acks_cost.drain", "replica acks: drain, on ÷ off", "×")
        self.projected = {
            (by, n): Figure(
                f"cluster.projected.{by}.{n}",
                f"projected aggregate, {n} primaries at 1 core, {label}",
                "records/s",
            )
            for by, label in PUBLISHED_BY.items()
            for n in PROJECTED_PRIMARIES
        }
        for figure in self.projected.values():
            figure.note = (
                "1 core ÷ (publish + drain Redis CPU per record on the run's busiest shard) "
                "× primaries; producers, workers and the network not counted"
            )

    def of(self, name: str) -> list[Figure]:
        """The figures of one deployment (a failed run is noted on them)."""
        return list(self.by[name].values())

    def add(self, name: str, measured: Measured) -> None:
        """One run of one deployment."""
        figures = self.by[name]
        figures["p50"].values.append(measured.p50_us)
        figures["p50"].also.append({"published twice": float(measured.published_twice)})
        figures["p99"].values.append(measured.p99_us)
        figures["drain"].values.append(measured.ready_all)
        figures["drain"].also.append({"steady rec/s": measured.steady, **measured.also})
        for key, values in (("publish_cpu", measured.publish_cpu_us),
                            ("fill_cpu", measured.fill_cpu_us),
                            ("drain_cpu", measured.drain_cpu_us)):  # fmt: skip
            figures[key].values.append(statistics.mean(values))
            if len(values) > 1:
                figures[key].also.append({"min shard": min(values), "max shard": max(values)})
        if name == "cluster":
            # The busiest shard bounds the whole: records go to shards in turn.
            publish_us = {"delay": measured.publish_cpu_us, "many": measured.fill_cpu_us}
            for (by, n), figure in self.projected.items():
                per_record_us = max(publish_us[by]) + max(measured.drain_cpu_us)
                figure.values.append(n * 1e6 / per_record_us)

    def add_ratios(self, run: dict[str, Measured]) -> None:
        """Acks on ÷ off within one run, when both ran."""
        on, off = run.get("acks"), run.get("cluster")
        if on is not None and off is not None:
            self.acks_publish.values.append(on.p50_us / off.p50_us)
            self.acks_drain.values.append(on.ready_all / off.ready_all)

    def all(self) -> list[Figure]:
        """Every figure, in table order."""
        ordered = [self.by[name][key] for key in ("p50", "p99") for name in DEPLOYMENTS]
        ordered += [self.by[name]["drain"] for name in DEPLOYMENTS]
        ordered += [self.acks_publish, self.acks_drain]
        ordered += [
            self.by[name][key]
            for key in ("publish_cpu", "fill_cpu", "drain_cpu")
            for name in DEPLOYMENTS
        ]
        return [*ordered, *self.projected.values()]
