"""The fold of the figures stream: rates, health marks and workers, as RESOLVE keeps them on Redis.

Pure (no broker): :class:`FiguresFold` takes the stream's events in order
(:func:`~aicm_tasks.broker.rabbitmq.events.figures_event`, one per settled batch
and per worker heartbeat) and answers what :mod:`aicm_tasks.broker.figures`
reads from Redis:

* **rates**: each event's ``rates`` increments, summed over the spans asked for
  (the last 5 s, the minute, the health window) by the event's time;
* **health marks**: the same writes RESOLVE applies to the health hash, in
  stream order: ``noted`` fields set to the event's time, ``started`` set only
  if absent, ``ended`` removed. Only events since the reader's start offset are
  seen, so a run that began before it counts from its first event seen (a lower
  bound; the window judged is shorter than the span read);
* **workers**: each worker's last event is its "last seen" (a worker appends at
  least a heartbeat while idle, as it renews its lease on Redis), its Celery
  name, and its ``held`` count when the event carries one (records it holds
  unacknowledged; RabbitMQ reports no unacked count over AMQP).

Times are the workers' clocks (RabbitMQ gives an AMQP 0-9-1 client no server
time): a worker whose clock is off by X s shifts its marks by X s.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from aicm_tasks.broker.rabbitmq.events import FIGURES


@dataclass(slots=True)
class FiguresFold:
    """The figures stream folded so far; :meth:`add` the next events in stream order."""

    #: Longest span a rate is summed over, in seconds (older increments are dropped).
    keep_s: float
    #: ``(at, rates)`` of the events still inside ``keep_s``.
    rates: deque[tuple[float, dict[str, int]]] = field(default_factory=deque)
    #: The health hash: field -> time (the worker's clock).
    health: dict[str, float] = field(default_factory=dict)
    #: consumer -> ``{"name", "at", "held"}`` of its last event.
    workers: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Counter increments of every event read (``stats``), summed.
    totals: dict[str, int] = field(default_factory=dict)
    #: Time of the first event read (None: none yet).
    first_at: float | None = None

    def add(self, events: Iterable[dict[str, Any]]) -> None:
        """Apply ``events`` (dicts, stream order); other kinds are skipped."""
        for event in events:
            if event.get("event") != FIGURES or not isinstance(event.get("at"), int | float):
                continue
            at = float(event["at"])
            if self.first_at is None:
                self.first_at = at
            self.rates.append((at, _counts(event.get("rates"))))
            for name, count in _counts(event.get("stats")).items():
                self.totals[name] = self.totals.get(name, 0) + count
            for name in _names(event.get("noted")):
                self.health[name] = at
            for name in _names(event.get("started")):
                self.health.setdefault(name, at)
            for name in _names(event.get("ended")):
                self.health.pop(name, None)
            consumer = event.get("consumer")
            if isinstance(consumer, str):
                held = event.get("held")
                self.workers[consumer] = {
                    "name": str(event.get("name") or consumer),
                    "at": at,
                    "held": held if isinstance(held, int) else 0,
                }

    def trim(self, now: float) -> None:
        """Drop rate increments older than ``keep_s`` before ``now``."""
        while self.rates and self.rates[0][0] < now - self.keep_s:
            self.rates.popleft()

    def summed(self, rate: str, now: float, span_s: float) -> int:
        """``rate`` summed over the events of the last ``span_s`` before ``now``."""
        return sum(r.get(rate, 0) for at, r in self.rates if at > now - span_s)

    def ago(self, mark: str, now: float) -> float | None:
        """Seconds since the health ``mark`` (None: not set)."""
        at = self.health.get(mark)
        return None if at is None else round(max(0.0, now - at), 1)


def _counts(value: Any) -> dict[str, int]:
    if not isinstance(value, dict):
        return {}
    return {str(k): int(v) for k, v in value.items() if isinstance(v, int)}


def _names(value: Any) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else []
