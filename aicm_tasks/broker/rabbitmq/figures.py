"""The pipeline's figures on RabbitMQ (``status``, ``monitor``, the worker's metrics), judged.

The same :class:`~aicm_tasks.broker.health.Figures`, judged by the same
:func:`~aicm_tasks.broker.health.judge`, as on Redis; read from
(``docs/design/rabbitmq.md``, "Status, monitor, metrics"):

* **queued**: the record queue's ready count (passive declare);
* **scheduled**: the ready counts of the 28 delay levels (retries and
  countdowns waiting for their time; the levels are shared by every queue of the
  vhost under the same prefix, so this counts theirs too). RabbitMQ moves a
  record when it is due, so none is ever "due and not promoted";
* **parked**: records RabbitMQ moved past the delivery limit, waiting for a
  worker to dead-letter them;
* **held** (unacknowledged): not reported over AMQP; the sum of what alive
  workers last said they hold, when their figures events say it;
* **dead letters**: the dead-letter stream folded (live entries by reason);
* **rates, health marks, workers**: the figures stream, from a recent offset
  (:mod:`.figures_fold`);
* **oldest queued**: unknown. Peeking at a queue's head takes a delivery,
  which a quorum queue counts toward the delivery limit; a stall is judged
  from the health marks instead;
* **the broker's settings**: a record queue declared other than aicm-tasks
  declares it (a classic queue, no ``reject-publish``, no at-least-once
  dead-lettering) puts records at risk: a problem.

No Redis is opened on this path. :class:`RabbitFiguresReader` keeps its stream
consumers between readings: the first reading reads to a mark it appends
(:mod:`.streams`), the next take what arrived since (``monitor`` redraws every
second without growing the streams).
"""

from __future__ import annotations

import itertools
import math
import re
import time
from typing import Any

import amqp

from aicm_tasks.broker.health import Figures, Thresholds, judge
from aicm_tasks.broker.keys import (
    IDLE_AT,
    LAST_DELIVERED_AT,
    LAST_UNAUTHORIZED_AT,
    RATE_DEAD_LETTERED,
    RATE_DELIVERED,
    RATE_REQUESTS,
    RATE_RETRIED,
    RATE_TRANSPORT_FAILED,
    RATE_UNAUTHORIZED,
    RETRYING_SINCE,
    UNAUTHORIZED_SINCE,
)
from aicm_tasks.broker.rabbitmq.connection import close_quietly, open_connection
from aicm_tasks.broker.rabbitmq.events import DEAD, fold_dead_letters
from aicm_tasks.broker.rabbitmq.figures_fold import FiguresFold
from aicm_tasks.broker.rabbitmq.names import RabbitNames
from aicm_tasks.broker.rabbitmq.streams import StreamReader, stream_exists

#: The spans ``monitor`` shows the delivery rate over, in seconds (as on Redis).
NOW_SPAN_S = 5
MINUTE_S = 60
#: What ``recent`` counts over the health window (as on Redis).
RECENT_FIELDS = (
    RATE_DELIVERED,
    RATE_RETRIED,
    RATE_DEAD_LETTERED,
    RATE_REQUESTS,
    RATE_TRANSPORT_FAILED,
    RATE_UNAUTHORIZED,
)
#: Shortest span of the figures stream read, in seconds: the window judged plus
#: the runs before it (a run of 401s that began before the span counts from its
#: first event seen).
MIN_SPAN_S = 600
#: Arguments an operator may set on the record queue without putting records at
#: risk (a length limit): a difference there is not reported.
TOLERATED_ARGUMENTS = ("x-max-length", "x-max-length-bytes")
#: Tries of the record queue check (one per tolerated argument that differs).
_CHECK_TRIES = 1 + len(TOLERATED_ARGUMENTS)
_INEQUIVALENT = re.compile(r"inequivalent arg '([^']+)'.*current is (?:the value '([^']*)'|none)")


def queue_counts(connection: amqp.Connection, queue: str) -> tuple[int, int] | None:
    """``(ready messages, consumers)`` of ``queue`` (passive declare); None when it
    is not declared."""
    channel = connection.channel()
    try:
        ok = channel.queue_declare(queue, passive=True)
    except amqp.exceptions.NotFound:
        return None
    channel.close()
    return (int(ok[1]), int(ok[2])) if ok is not None else (0, 0)


def ready_count(connection: amqp.Connection, queue: str) -> int | None:
    """Ready messages of ``queue`` (passive declare); None when it is not declared."""
    counts = queue_counts(connection, queue)
    return None if counts is None else counts[0]


def read_depth(connection: amqp.Connection, names: RabbitNames) -> dict[str, int]:
    """``queued``, ``scheduled``, ``parked``, and the record queue's ``consumers``
    (30 passive declares, a few ms)."""
    queued, consumers = queue_counts(connection, names.queue) or (0, 0)
    return {
        "queued": queued,
        "scheduled": sum(ready_count(connection, level) or 0 for level in names.delay_levels()),
        "parked": ready_count(connection, names.parked) or 0,
        "consumers": consumers,
    }


def record_queue_risk(connection: amqp.Connection, names: RabbitNames) -> str | None:
    """Why the record queue puts records at risk (None: it is declared as aicm-tasks
    declares it, or not declared yet).

    AMQP does not show a queue's arguments; declaring it again with ours does:
    RabbitMQ refuses (406) an argument that differs and names it. A length limit
    the operator set is taken as theirs and the check is repeated with it.
    """
    arguments = names.record_queue_arguments()
    for _ in range(_CHECK_TRIES):
        if ready_count(connection, names.queue) is None:
            return None  # a worker declares it at start; nothing is in it yet
        channel = connection.channel()
        try:
            channel.queue_declare(names.queue, durable=True, auto_delete=False, arguments=arguments)
        except amqp.exceptions.AccessRefused:
            return None  # this user may not declare: the check cannot be made
        except amqp.exceptions.PreconditionFailed as exc:
            text = str(exc.reply_text)
            found = _INEQUIVALENT.search(text)
            if found is None or found.group(1) not in TOLERATED_ARGUMENTS:
                return (
                    f"the record queue {names.queue} is not declared as aicm-tasks declares it "
                    "(a quorum queue, x-overflow reject-publish, at-least-once dead-lettering "
                    f"to {names.parked}), so records in it may be lost: RabbitMQ says "
                    f"{text!r}. Move its records and declare it again (docs/troubleshooting.md)"
                )
            arguments = dict(arguments)
            if found.group(2) is None:
                arguments.pop(found.group(1), None)
            else:
                arguments[found.group(1)] = int(found.group(2))
            continue
        channel.close()
        return None
    return None


class DeadLetterTally:
    """Live dead letters by id -> reason, folded (:func:`fold_dead_letters`) as events arrive."""

    def __init__(self) -> None:
        self.live: dict[str, str] = {}

    def add(self, events: Any) -> None:
        """Fold the next events onto what is live (stream order is kept)."""
        state = (
            {"event": DEAD, "id": dead_id, "entry": {"reason": reason}}
            for dead_id, reason in self.live.items()
        )
        compact = (
            {"event": DEAD, "id": e.get("id"), "entry": {"reason": e["entry"].get("reason")}}
            if e.get("event") == DEAD and isinstance(e.get("entry"), dict)
            else e
            for _, e in events
        )
        folded = fold_dead_letters(itertools.chain(state, compact))
        self.live = {dead_id: str(entry.get("reason")) for dead_id, entry in folded.items()}

    def by_reason(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for reason in self.live.values():
            counts[reason] = counts.get(reason, 0) + 1
        return dict(sorted(counts.items()))


class RabbitFiguresReader:
    """Reads :class:`Figures` of one deployment; keeps its consumers between readings."""

    def __init__(
        self, url: str, names: RabbitNames, *, window_s: float, timeout_s: float = 10.0
    ) -> None:
        self.url = url
        self.names = names
        self.timeout_s = timeout_s
        #: Seconds of the figures stream read at the start (``x-stream-offset``).
        self.span_s = math.ceil(max(2 * window_s, MIN_SPAN_S))
        self.fold = FiguresFold(keep_s=max(window_s, MINUTE_S) + 1)
        self.tally = DeadLetterTally()
        self._connection: amqp.Connection | None = None
        self._readers: dict[str, StreamReader] = {}

    def read(self, thresholds: Thresholds) -> Figures:
        """One reading, judged against ``thresholds``."""
        if self._connection is None:
            self._connection = open_connection(self.url, timeout_s=self.timeout_s)
        connection = self._connection
        try:
            self._follow(connection, self.names.dead_letters, "first", self.tally.add)
            self._follow(
                connection,
                self.names.figures,
                f"{self.span_s}s",
                lambda events: self.fold.add(e for _, e in events),
            )
            depth = read_depth(connection, self.names)
            risk = record_queue_risk(connection, self.names)
            declared = ready_count(connection, self.names.queue) is not None
        except BaseException:
            self.close()  # the next reading starts afresh
            raise
        return self._figures(time.time(), depth, thresholds, risk, declared)

    def _follow(self, connection: amqp.Connection, stream: str, offset: str, fold: Any) -> None:
        reader = self._readers.get(stream)
        if reader is None:
            if not stream_exists(connection, stream):
                return
            reader = StreamReader(connection, stream, offset, timeout_s=self.timeout_s)
            self._readers[stream] = reader
            fold(reader.to_end())
        else:
            fold(reader.poll())

    def _figures(
        self,
        now: float,
        depth: dict[str, int],
        thresholds: Thresholds,
        risk: str | None,
        declared: bool,
    ) -> Figures:
        fold = self.fold
        fold.trim(now)
        window_s = thresholds.window_s
        workers = sorted(
            (
                {
                    "name": seen["name"],
                    "consumer": consumer,
                    "seen_s_ago": round(max(0.0, now - seen["at"]), 1),
                    "alive": now - seen["at"] <= thresholds.no_worker_s,
                }
                for consumer, seen in fold.workers.items()
            ),
            key=lambda w: (w["seen_s_ago"], w["name"]),
        )
        alive = {w["consumer"] for w in workers if w["alive"]}
        workers_alive = [w["name"] for w in workers if w["alive"]]
        consumers = depth["consumers"]
        if not workers_alive and consumers:
            # Someone consumes the record queue now (RabbitMQ drops a consumer with
            # its connection), though no worker appended figures lately: not "no
            # worker alive", but said.
            workers_alive = [
                f"{consumers} consumer{'' if consumers == 1 else 's'} of {self.names.queue}"
            ]
        minute = fold.summed(RATE_DELIVERED, now, MINUTE_S)
        last_5s = fold.summed(RATE_DELIVERED, now, NOW_SPAN_S)
        idle_s_ago = fold.ago(IDLE_AT, now)
        last_delivered_s_ago = fold.ago(LAST_DELIVERED_AT, now)
        if idle_s_ago is None and last_delivered_s_ago is None and fold.first_at is not None:
            # Nothing delivered, and no worker found the queue empty, in all the
            # span read: at least that long (records due were not delivered).
            idle_s_ago = round(max(0.0, now - fold.first_at), 1)
        figures = Figures(
            queued=depth["queued"],
            held=sum(s["held"] for c, s in fold.workers.items() if c in alive),
            scheduled=depth["scheduled"],
            parked=depth["parked"],
            dead_letters=len(self.tally.live),
            dead_letters_by_reason=self.tally.by_reason(),
            delivered_last_minute=minute,
            delivered_per_s=round(minute / MINUTE_S, 1),
            delivered_last_5s=last_5s,
            delivered_per_s_last_5s=round(last_5s / NOW_SPAN_S, 1),
            workers_alive=workers_alive,
            workers=workers,
            last_worker_seen_s_ago=workers[0]["seen_s_ago"] if workers else None,
            oldest_queued_s=None,
            totals=dict(fold.totals),
            last_errors=[],
            window_s=window_s,
            recent={f: fold.summed(f, now, window_s) for f in RECENT_FIELDS},
            last_delivered_s_ago=last_delivered_s_ago,
            idle_s_ago=idle_s_ago,
            retrying_for_s=fold.ago(RETRYING_SINCE, now),
            unauthorized_for_s=fold.ago(UNAUTHORIZED_SINCE, now),
            last_unauthorized_s_ago=fold.ago(LAST_UNAUTHORIZED_AT, now),
            rabbitmq={
                "record_queue": self.names.queue,
                "declared": declared,
                "as_declared_by_aicm_tasks": declared and risk is None,
                "consumers": consumers,
            },
        )
        if risk is not None:
            figures.problems.append(risk)
        if consumers and not alive:
            figures.warnings.append(
                f"the record queue has {consumers} consumer{'' if consumers == 1 else 's'} but no "
                f"worker appended figures in the last {thresholds.no_worker_s:.0f}s: an idle "
                "worker that sends no heartbeat, or a consumer that is not an aicm-tasks worker"
            )
        if not declared:
            figures.warnings.append(
                f"the record queue {self.names.queue} is not declared yet: "
                "a worker declares it when it starts"
            )
        figures.problems.extend(judge(figures, thresholds))
        return figures

    def close(self) -> None:
        """Close the consumers and the connection."""
        self._readers.clear()
        close_quietly(self._connection)
        self._connection = None


def depth_of(figures: Figures) -> dict[str, int]:
    """What the worker's gauges show (``Observer.housekeeping``), from one reading."""
    return {
        "queued": figures.queued,
        "held": figures.held,
        "scheduled": figures.scheduled,
        "dead_letters": figures.dead_letters,
        "parked": figures.parked,
        "workers": len(figures.workers_alive),
    }


def read_rabbit_figures(
    url: str, names: RabbitNames, thresholds: Thresholds | None = None
) -> Figures:
    """One reading (``status``): read, judge, close."""
    thresholds = thresholds or Thresholds()
    reader = RabbitFiguresReader(url, names, window_s=thresholds.window_s)
    try:
        return reader.read(thresholds)
    finally:
        reader.close()
