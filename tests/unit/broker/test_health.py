"""Judging health (broker/health.py): each rule over plain figures, no Redis."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from aicm_tasks.broker.health import Figures, Thresholds, judge, undelivered_for_s

WINDOW = Thresholds(window_s=120)


def figures(**changes: Any) -> Figures:
    """A healthy reading: a worker alive, nothing waiting; ``changes`` on top."""
    base = Figures(
        queued=0, held=0, scheduled=0, dead_letters=0, dead_letters_by_reason={},
        delivered_last_minute=0, delivered_per_s=0.0, workers_alive=["w1@host"],
        last_worker_seen_s_ago=1.0, oldest_queued_s=None, totals={}, last_errors=[],
    )  # fmt: skip
    return dataclasses.replace(base, **changes)


def test_a_quiet_pipeline_with_nothing_waiting_is_healthy() -> None:
    assert judge(figures(last_delivered_s_ago=9000.0, idle_s_ago=2.0), WINDOW) == []


def test_records_waiting_with_no_delivery_for_the_window_are_a_stall() -> None:
    stalled = figures(queued=28, scheduled=2000, last_delivered_s_ago=130.0, idle_s_ago=900.0)
    assert judge(stalled, WINDOW) == [
        "2,028 records waiting (28 queued, 2,000 scheduled for a retry, 0 held) and none "
        "delivered for 130s (threshold 120s)"
    ]
    assert judge(stalled, Thresholds(window_s=131)) == []


def test_a_stall_counts_from_the_later_of_the_last_delivery_and_the_last_idle_moment() -> None:
    # Delivered an hour ago, nothing waited 10 s ago: a record that arrived since
    # has waited at most 10 s, not an hour.
    fresh = figures(queued=1, last_delivered_s_ago=3600.0, idle_s_ago=10.0)
    assert undelivered_for_s(fresh) == 10.0
    assert judge(fresh, WINDOW) == []
    assert undelivered_for_s(figures(queued=1, last_delivered_s_ago=5.0, idle_s_ago=500.0)) == 5.0


def test_an_outage_whose_records_all_wait_out_their_backoff_is_a_stall() -> None:
    # Every record is scheduled for a retry, none due, and a worker just found
    # nothing due: the run of retries with no delivery still tells.
    outage = figures(scheduled=2028, retrying_for_s=130.0, idle_s_ago=2.0)
    assert undelivered_for_s(outage) == 130.0
    assert judge(outage, WINDOW)[0].startswith("2,028 records waiting (0 queued, 2,028 scheduled")


def test_a_countdown_not_yet_due_is_no_stall_but_a_due_retry_is() -> None:
    countdown = figures(scheduled=5, last_delivered_s_ago=9000.0, idle_s_ago=9000.0)
    assert undelivered_for_s(countdown) is None and judge(countdown, WINDOW) == []
    due = dataclasses.replace(countdown, scheduled_due=2, idle_s_ago=200.0)
    assert due.due == 2 and undelivered_for_s(due) == 200.0
    assert judge(due, WINDOW)[0].startswith("5 records waiting")


def test_held_records_that_never_settle_are_a_stall_too() -> None:
    hung = figures(held=500, last_delivered_s_ago=121.0, idle_s_ago=None)
    assert "500 held" in judge(hung, WINDOW)[0]


def test_with_no_mark_yet_the_oldest_queued_record_tells_how_long_records_waited() -> None:
    assert undelivered_for_s(figures(queued=3, oldest_queued_s=200.0)) == 200.0
    assert undelivered_for_s(figures(scheduled=3)) is None  # nothing tells: not judged
    assert judge(figures(scheduled=3), WINDOW) == []


def test_a_key_refused_for_the_window_is_unhealthy_whatever_else() -> None:
    refused = figures(
        scheduled=40, unauthorized_for_s=125.0, last_unauthorized_s_ago=4.0, idle_s_ago=1.0
    )  # the records wait out the auth retry interval: no retry run noted here
    assert judge(refused, WINDOW) == [
        "/track has refused the API key (401/403) for 125s (threshold 120s, last 4s ago): "
        "check AICM_API_KEY (or the alias's key in AICM_API_KEYS)"
    ]
    assert judge(dataclasses.replace(refused, unauthorized_for_s=119.0), WINDOW) == []
    # A run left over once nothing waits puts nothing at risk.
    assert judge(dataclasses.replace(refused, scheduled=0), WINDOW) == []


@pytest.mark.parametrize(
    ("requests", "failed", "dominates"),
    [(10, 10, True), (10, 6, True), (10, 5, False), (1, 1, True), (0, 0, False)],
)
def test_transport_errors_dominate_when_more_than_half_the_requests_failed_during_a_stall(
    requests: int, failed: int, dominates: bool
) -> None:
    stalled = figures(
        scheduled=50,
        retrying_for_s=200.0,
        recent={"requests": requests, "transport_failed": failed},
        last_errors=[{"at": 0, "detail": "network: ConnectError: [Errno 111] refused"}],
    )
    problems = judge(stalled, WINDOW)
    assert problems[0].startswith("50 records waiting")
    transport = [p for p in problems if p.startswith("transport errors dominate")]
    assert bool(transport) is dominates
    if dominates:
        assert transport == [
            f"transport errors dominate: {failed} of {requests} requests to /track in the last "
            "120s got no usable answer (connection refused, timeout, 5xx, 429); last: "
            "network: ConnectError: [Errno 111] refused"
        ]


def test_transport_errors_while_records_still_flow_are_not_unhealthy() -> None:
    flaky = figures(
        queued=100,
        last_delivered_s_ago=1.0,
        recent={"requests": 10, "transport_failed": 9, "delivered": 500},
    )
    assert judge(flaky, WINDOW) == []


def test_judge_lists_every_threshold_crossed_at_once() -> None:
    reading = figures(
        queued=1, dead_letters=7, workers_alive=[], last_worker_seen_s_ago=None,
        oldest_queued_s=1000.0,
    )  # fmt: skip
    assert judge(reading, Thresholds(max_dead_letters=5)) == [
        "no worker alive for 60s (never seen)",
        "1 record waiting (1 queued, 0 scheduled for a retry, 0 held) and none delivered "
        "for 1000s (threshold 120s)",
        "oldest queued record is 1000s old (threshold 300s)",
        "7 dead letters (threshold 5)",
    ]


def test_the_reading_as_json_carries_the_new_figures() -> None:
    shown = figures(queued=2, held=1, scheduled=3, unauthorized_for_s=5.0).as_dict()
    assert shown["waiting"] == 6 and shown["unauthorized_for_s"] == 5.0
    assert shown["due"] == 3
    assert {
        "workers", "recent", "window_s", "delivered_last_5s", "idle_s_ago", "retrying_for_s",
        "scheduled_due",
    } <= set(shown)  # fmt: skip
