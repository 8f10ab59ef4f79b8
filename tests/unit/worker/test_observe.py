"""Observers: no-op defaults, called directly, and one failing never silences the others."""

from __future__ import annotations

import logging

import pytest

from aicm_tasks.broker.redis_settings import BrokerSettings
from aicm_tasks.worker.delivery import Summary
from aicm_tasks.worker.observe import BatchReport, Observer, Observers


class Recording(Observer):
    """Overrides two of the four methods; the others keep the no-op defaults."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []

    def request_done(self, http_status: int | None, seconds: float) -> None:
        self.calls.append(("request_done", http_status))

    def housekeeping(self, depth: dict[str, int]) -> None:
        self.calls.append(("housekeeping", depth))


class Broken(Observer):
    def request_done(self, http_status: int | None, seconds: float) -> None:
        raise RuntimeError("exporter down")

    def housekeeping(self, depth: dict[str, int]) -> None:
        raise RuntimeError("exporter down")


def report() -> BatchReport:
    return BatchReport("aicm:batch:w:1", Summary(1, 0, {}, 1), 0.01, ())


def test_an_observer_hears_what_it_overrides_and_the_rest_are_no_ops() -> None:
    recording = Recording()
    observers = Observers([recording])
    observers.request_done(200, 0.01)
    observers.batch_settled(report())
    observers.redis_settings_read(BrokerSettings("noeviction", True, "", "CONFIG"), [])
    observers.housekeeping({"queued": 3})
    assert recording.calls == [("request_done", 200), ("housekeeping", {"queued": 3})]


def test_a_failing_observer_is_logged_and_the_next_one_still_hears(
    caplog: pytest.LogCaptureFixture,
) -> None:
    recording = Recording()
    observers = Observers([Broken(), recording])
    with caplog.at_level(logging.ERROR, logger="aicm_tasks.worker.observe"):
        observers.request_done(503, 0.2)
        observers.housekeeping({"queued": 0})
    assert recording.calls == [("request_done", 503), ("housekeeping", {"queued": 0})]
    assert [r.getMessage() for r in caplog.records] == [
        "observer Broken failed in request_done",
        "observer Broken failed in housekeeping",
    ]


def test_no_observers_is_falsy_so_the_service_skips_reading_the_depth() -> None:
    assert not Observers()
    assert Observers([Observer()])
