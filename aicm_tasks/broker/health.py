"""Whether the pipeline is healthy: the figures status reads, and the judging.

Pure: :func:`judge` takes a :class:`Figures` reading (made by
:func:`aicm_tasks.broker.figures.read_figures`) and :class:`Thresholds`, and
returns the reasons the pipeline is unhealthy. The rules (``docs/monitoring.md``
repeats them):

* no worker renewed its lease for ``no_worker_s``;
* **a stall**: records wait and none was delivered for ``window_s``. Either
  records are due (queued, held, or scheduled and due) and none was delivered
  since the later of the last delivery and the last time a worker found
  nothing due (workers look every 5 s), so a quiet pipeline that receives a
  record is not stalled the moment it does; or batches have settled with
  records retried and none delivered since (``retrying_since``), which sees an
  outage whose records all wait out their backoff in the scheduled set. A
  countdown not yet due (``eta``) is neither;
* **the key is refused**: ``/track`` has answered 401/403, with no answer that
  took the key since, for ``window_s``;
* **transport errors dominate**: during a stall, more than half of the POSTs of
  the last ``window_s`` got no answer the contract reads (connection refused or
  reset, a timeout, a 5xx, a 429, an unreadable 200). It names why records do
  not move; a flaky server that still delivers is not unhealthy, its failures
  show in ``recent``;
* the oldest queued record waited more than ``max_oldest_queued_s`` since it
  was enqueued; more dead letters than ``max_dead_letters`` (when set);
* the broker's settings put records at risk (``redis_settings.judge_settings``,
  added by :func:`~aicm_tasks.broker.figures.read_figures`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: A worker that renewed its lease within this many seconds counts as alive.
ALIVE_WITHIN_S = 60.0
#: How long a stall, a refused key or dominating transport errors must last
#: before status calls the pipeline unhealthy, in seconds (AICM_HEALTH_WINDOW_S).
DEFAULT_HEALTH_WINDOW_S = 120.0
#: Oldest queued record, since it was enqueued, before status calls it unhealthy.
DEFAULT_MAX_OLDEST_QUEUED_S = 300.0


@dataclass(frozen=True)
class Thresholds:
    """When ``status`` calls the pipeline unhealthy (durations in seconds)."""

    no_worker_s: float = ALIVE_WITHIN_S
    max_oldest_queued_s: float = DEFAULT_MAX_OLDEST_QUEUED_S
    max_dead_letters: int | None = None
    window_s: float = DEFAULT_HEALTH_WINDOW_S


@dataclass(frozen=True)
class Figures:
    """One reading of the pipeline. Ages are seconds on the Redis server's clock
    (on RabbitMQ, on the workers' clocks: see ``broker/rabbitmq/figures.py``)."""

    queued: int
    held: int
    scheduled: int
    dead_letters: int
    dead_letters_by_reason: dict[str, int]
    delivered_last_minute: int
    delivered_per_s: float
    #: Workers alive, named as Flower names them (``w1@host``; the consumer id
    #: for a worker that gave no name).
    workers_alive: list[str]
    last_worker_seen_s_ago: float | None
    #: Age of the record next in line, since it was enqueued.
    oldest_queued_s: float | None
    totals: dict[str, int]
    last_errors: list[dict[str, Any]]
    #: What flows now: records delivered over the last 5 s, and per second.
    delivered_last_5s: int = 0
    delivered_per_s_last_5s: float = 0.0
    #: Every worker seen: ``{"name", "consumer", "seen_s_ago", "alive"}``.
    workers: list[dict[str, Any]] = field(default_factory=list)
    #: The window health is judged over, and what happened in it: records
    #: ``delivered``, ``retried``, ``dead_lettered``; POSTs (``requests``), of
    #: which ``transport_failed`` and ``unauthorized`` (401/403).
    window_s: float = DEFAULT_HEALTH_WINDOW_S
    recent: dict[str, int] = field(default_factory=dict)
    last_delivered_s_ago: float | None = None
    #: Since a worker last found nothing queued, held or due.
    idle_s_ago: float | None = None
    #: Scheduled records whose time has come (retries due, not yet promoted).
    scheduled_due: int = 0
    #: How long batches have settled with records retried and none delivered.
    retrying_for_s: float | None = None
    #: How long /track has been refusing the key (None: it is not).
    unauthorized_for_s: float | None = None
    last_unauthorized_s_ago: float | None = None
    #: The broker's eviction and persistence settings (see redis_settings.py).
    redis_settings: dict[str, Any] = field(default_factory=dict)
    #: Records RabbitMQ moved past the delivery limit, waiting for a worker to
    #: dead-letter them (RabbitMQ only).
    parked: int = 0
    #: On RabbitMQ: the record queue's name and whether it is declared as
    #: aicm-tasks declares it (empty on Redis).
    rabbitmq: dict[str, Any] = field(default_factory=dict)
    #: With several shards: those whose Redis did not answer (shard -> the
    #: error), left out of every figure above; each is also a problem.
    shards_down: dict[str, str] = field(default_factory=dict)
    #: What deserves a look but does not make the pipeline unhealthy (AOF off).
    warnings: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def waiting(self) -> int:
        """Records not yet delivered nor dead-lettered."""
        return self.queued + self.scheduled + self.held

    @property
    def due(self) -> int:
        """Records some worker should be delivering now: queued, held, or due."""
        return self.queued + self.held + self.scheduled_due

    @property
    def healthy(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        figures = dict(self.__dict__)
        figures["waiting"] = self.waiting
        figures["due"] = self.due
        figures["healthy"] = self.healthy
        return figures


def undelivered_for_s(figures: Figures) -> float | None:
    """How long records have waited with none delivered (None: no sign of it).

    Records due: since the later of the last delivery and the last time nothing
    was due (with neither noted yet, no worker of this version ran: the age of
    the oldest queued record stands in). Records retried: since batches began
    to settle with retries and no delivery. The longer of the two.
    """
    if figures.waiting == 0:
        return None
    spans: list[float] = []
    if figures.due > 0:
        marks = [s for s in (figures.last_delivered_s_ago, figures.idle_s_ago) if s is not None]
        since = min(marks) if marks else figures.oldest_queued_s
        if since is not None:
            spans.append(since)
    if figures.retrying_for_s is not None:
        spans.append(figures.retrying_for_s)
    return max(spans) if spans else None


def judge(figures: Figures, thresholds: Thresholds) -> list[str]:
    """The reasons the pipeline is unhealthy (empty: healthy)."""
    problems = []
    if not figures.workers_alive:
        since = (
            "never seen"
            if figures.last_worker_seen_s_ago is None
            else f"last seen {figures.last_worker_seen_s_ago:.0f}s ago"
        )
        problems.append(f"no worker alive for {thresholds.no_worker_s:.0f}s ({since})")
    window_s = thresholds.window_s
    stalled_s = undelivered_for_s(figures)
    stalled = stalled_s is not None and stalled_s >= window_s
    if stalled:
        problems.append(
            f"{figures.waiting:,} record{'' if figures.waiting == 1 else 's'} waiting "
            f"({figures.queued:,} queued, "
            f"{figures.scheduled:,} scheduled for a retry, {figures.held:,} held) and none "
            f"delivered for {stalled_s:.0f}s (threshold {window_s:.0f}s)"
        )
    refused_s = figures.unauthorized_for_s
    # Only while records wait: a run left over after the queue was emptied by
    # other means puts nothing at risk (the next refusal restarts the judging).
    if refused_s is not None and refused_s >= window_s and figures.waiting > 0:
        last = figures.last_unauthorized_s_ago
        problems.append(
            f"/track has refused the API key (401/403) for {refused_s:.0f}s "
            f"(threshold {window_s:.0f}s"
            + ("" if last is None else f", last {last:.0f}s ago")
            + "): check AICM_API_KEY (or the alias's key in AICM_API_KEYS)"
        )
    requests = figures.recent.get("requests", 0)
    failed = figures.recent.get("transport_failed", 0)
    if stalled and requests > 0 and failed * 2 > requests:
        last_detail = next((str(e["detail"]) for e in figures.last_errors if e.get("detail")), None)
        problems.append(
            f"transport errors dominate: {failed:,} of {requests:,} requests to /track in the "
            f"last {window_s:.0f}s got no usable answer (connection refused, timeout, 5xx, 429)"
            + ("" if last_detail is None else f"; last: {last_detail[:200]}")
        )
    if (
        figures.oldest_queued_s is not None
        and figures.oldest_queued_s > thresholds.max_oldest_queued_s
    ):
        problems.append(
            f"oldest queued record is {figures.oldest_queued_s:.0f}s old "
            f"(threshold {thresholds.max_oldest_queued_s:.0f}s)"
        )
    if (
        thresholds.max_dead_letters is not None
        and figures.dead_letters > thresholds.max_dead_letters
    ):
        problems.append(
            f"{figures.dead_letters} dead letters (threshold {thresholds.max_dead_letters})"
        )
    return problems
