"""The figures stream's fold and the dead-letter tally (pure; the streams are tested live)."""

from __future__ import annotations

import json
from typing import Any

from aicm_tasks.broker.keys import (
    LAST_DELIVERED_AT,
    RATE_DELIVERED,
    RETRYING_SINCE,
    UNAUTHORIZED_SINCE,
)
from aicm_tasks.broker.rabbitmq.events import (
    PURGED,
    REPLAYED,
    dead_event,
    figures_event,
    settled_event,
)
from aicm_tasks.broker.rabbitmq.figures import DeadLetterTally
from aicm_tasks.broker.rabbitmq.figures_fold import FiguresFold
from aicm_tasks.broker.rabbitmq.streams import mark_event
from aicm_tasks.broker.resolution import Resolution


def event(consumer: str, at: float, **resolution: Any) -> dict:
    return json.loads(figures_event(consumer, f"{consumer}@h", Resolution(**resolution), at))


def test_health_marks_are_written_as_resolve_writes_them_in_stream_order():
    fold = FiguresFold(keep_s=120)
    fold.add(
        [
            event("a", 10.0, started=(RETRYING_SINCE,), noted=(LAST_DELIVERED_AT,)),
            event("b", 20.0, started=(RETRYING_SINCE, UNAUTHORIZED_SINCE)),
            event("a", 30.0, ended=(UNAUTHORIZED_SINCE,)),
        ]
    )
    # started: set only if absent; noted: set; ended: removed.
    assert fold.health == {RETRYING_SINCE: 10.0, LAST_DELIVERED_AT: 10.0}
    assert fold.ago(RETRYING_SINCE, 100.0) == 90.0
    assert fold.ago(UNAUTHORIZED_SINCE, 100.0) is None
    assert fold.workers["a"] == {"name": "a@h", "at": 30.0, "held": 0}
    assert fold.first_at == 10.0


def test_rates_are_summed_by_span_and_old_ones_trimmed():
    fold = FiguresFold(keep_s=61)
    fold.add([event("a", t, rates={RATE_DELIVERED: 1}, stats={"delivered": 1}) for t in range(100)])
    assert fold.summed(RATE_DELIVERED, 100.0, 5) == 4  # 96..99
    fold.trim(100.0)
    assert fold.summed(RATE_DELIVERED, 100.0, 1000) == 61  # 39..99 kept
    assert fold.totals == {"delivered": 100}  # counters of every event read


def test_other_events_and_a_workers_held_count_are_read_when_present():
    fold = FiguresFold(keep_s=60)
    held = event("a", 5.0)
    held["held"] = 7
    fold.add([json.loads(mark_event("n", 1.0)), {"event": "figures"}, held])
    assert fold.workers == {"a": {"name": "a@h", "at": 5.0, "held": 7}}


def test_the_dead_letter_tally_folds_new_events_onto_what_is_live():
    tally = DeadLetterTally()
    entry = json.dumps({"reason": "error"})
    tally.add((None, json.loads(e)) for e in [dead_event("a", entry, 1), dead_event("b", entry, 2)])
    tally.add((None, json.loads(e)) for e in [settled_event(REPLAYED, ["a"], 3)])
    assert tally.by_reason() == {"error": 1}
    again = json.dumps({"reason": "rejected"})
    tally.add(
        (None, json.loads(e)) for e in [dead_event("a", again, 4), settled_event(PURGED, ["b"], 5)]
    )
    assert tally.live == {"a": "rejected"}
