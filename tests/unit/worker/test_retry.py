from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import pytest

from aicm_tasks.worker.retry import (
    JITTER_FLOOR,
    MAX_RETRY_AFTER_S,
    BackoffPolicy,
    parse_retry_after,
)


def test_the_default_schedule_rides_out_at_least_an_hour() -> None:
    assert BackoffPolicy().guaranteed_outage_s() >= 3600


def test_delays_double_up_to_the_cap() -> None:
    policy = BackoffPolicy(base_s=1, max_s=300)
    assert [policy.ceiling_s(n) for n in range(10)] == [1, 2, 4, 8, 16, 32, 64, 128, 256, 300]
    assert policy.ceiling_s(1000) == 300


def test_jitter_stays_within_the_floor_and_the_ceiling() -> None:
    policy = BackoffPolicy(base_s=2, max_s=60)
    rng = random.Random(1)
    for retry in range(12):
        for _ in range(50):
            delay = policy.delay_s(retry, rng)
            assert JITTER_FLOOR * policy.ceiling_s(retry) <= delay <= policy.ceiling_s(retry)


def test_jitter_spreads_delays() -> None:
    rng = random.Random(2)
    assert len({round(BackoffPolicy().delay_s(5, rng), 6) for _ in range(20)}) > 10


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("", None),
        ("12", 12.0),
        ("0", 0.0),
        ("-3", 0.0),
        ("1e9", MAX_RETRY_AFTER_S),
        ("soon", None),
        ("nan", None),
    ],
)
def test_retry_after_seconds(header: str | None, expected: float | None) -> None:
    assert parse_retry_after(header) == expected


def test_retry_after_http_date() -> None:
    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    header = format_datetime(now + timedelta(seconds=90), usegmt=True)
    assert parse_retry_after(header, now=now) == 90.0
