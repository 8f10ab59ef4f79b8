"""The nine scenarios, in the order ``bench.run`` runs them."""

from __future__ import annotations

from collections.abc import Callable

from bench.config import Counts
from bench.harness import Bench
from bench.scenarios import (
    cluster,
    drain,
    latency,
    limits,
    publish,
    rabbitmq,
    sustained,
    track_many,
    worker_rss,
)
from bench.stats import Figure

Scenario = Callable[[Bench, Counts], list[Figure]]

#: Name on the command line (``--only``) -> the scenario's entry point.
SCENARIOS: dict[str, Scenario] = {
    "publish": publish.run,
    "drain": drain.run,
    "sustained": sustained.run,
    "latency": latency.run,
    "rss": worker_rss.run,
    "track_many": track_many.run,
    "limits": limits.run,
    "rabbitmq": rabbitmq.run,
    "cluster": cluster.run,
}
