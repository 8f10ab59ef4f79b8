"""The dead-letter stream's events and their fold (pure; the stream itself is tested live)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aicm_tasks.broker.rabbitmq.events import (
    PURGED,
    REPLAYED,
    dead_event,
    figures_event,
    fold_dead_letters,
    settled_event,
)
from aicm_tasks.broker.resolution import Resolution


def _entry(n: int) -> str:
    return json.dumps({"reason": "rejected", "attempts": n})


def test_the_last_dead_event_of_an_id_wins_until_a_replay_or_purge_names_it():
    events = [
        dead_event("a", _entry(1), 1.0),
        dead_event("b", _entry(1), 2.0),
        settled_event(REPLAYED, ["a"], 3.0),
        dead_event("a", _entry(2), 4.0),  # failed again after its replay
        settled_event(PURGED, ["b", "zzz"], 5.0),
        b"not json",
        b'{"event":"from-a-newer-version"}',
    ]
    assert fold_dead_letters(events) == {"a": {"reason": "rejected", "attempts": 2}}


def test_a_settling_event_must_be_replayed_or_purged():
    with pytest.raises(ValueError, match="not a settling event"):
        settled_event("dead", ["a"], 0.0)


def test_a_figures_event_carries_the_resolutions_counters():
    event = json.loads(
        figures_event("c1", "w1@h", Resolution(stats={"delivered": 3}, noted=("idle_at",)), 9.0)
    )
    assert event["stats"] == {"delivered": 3} and event["noted"] == ["idle_at"]
    assert (event["consumer"], event["name"], event["at"]) == ("c1", "w1@h", 9.0)


ids = st.sampled_from(["a", "b", "c"])
moves = st.lists(
    st.one_of(
        st.tuples(st.just("dead"), ids),
        st.tuples(st.sampled_from([REPLAYED, PURGED]), st.lists(ids, max_size=3)),
    ),
    max_size=30,
)


@given(moves)
def test_the_fold_matches_a_plain_replay_of_the_moves(script):
    model: dict[str, int] = {}
    events = []
    for n, (kind, what) in enumerate(script):
        if kind == "dead":
            model.pop(what, None)
            model[what] = n
            events.append(dead_event(what, _entry(n), float(n)))
        else:
            for dead_id in what:
                model.pop(dead_id, None)
            events.append(settled_event(kind, what, float(n)))
    folded = fold_dead_letters(events)
    assert list(folded) == list(model)
    assert {k: v["attempts"] for k, v in folded.items()} == model
