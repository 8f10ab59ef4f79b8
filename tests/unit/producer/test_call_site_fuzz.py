"""The call site under fuzzing: any ``apply_async`` options, any ``track_many`` list.

Over a real Redis (the test db, keys of this test's own queue and prefix): any
input either publishes exactly one well-formed record (queued, or scheduled at a
finite due time) or raises a :class:`~aicm_tasks.errors.RecordError` and
publishes nothing; ``track_many`` publishes all of its records or none.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, cast

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aicm_tasks import create_app
from aicm_tasks.errors import AicmTasksError, RecordError
from aicm_tasks.settings import Settings
from tests.conftest import TEST_REDIS_URL, _real_redis_or_skip
from tests.support.tasks import track_of


class CallSite:
    """A track task on its own queue and key prefix, and what it published."""

    def __init__(self, client: redis.Redis) -> None:
        run = uuid.uuid4().hex[:8]
        self.settings = Settings(
            broker_url=TEST_REDIS_URL,
            queue=f"aicm.fuzz.{run}",
            key_prefix=f"aicm-fuzz-{run}",
            spool_enabled=False,
        )
        self.track = track_of(create_app(self.settings))
        self.client = client

    def published(self) -> tuple[list[bytes], list[tuple[bytes, float]]]:
        queued = self.client.lrange(self.settings.queue, 0, -1)
        scheduled = self.client.zrange(
            f"{self.settings.key_prefix}:scheduled", 0, -1, withscores=True
        )
        # bytes: redis-py types a reply as bytes | str, whatever decode_responses says.
        return cast(list[bytes], queued), cast(list[tuple[bytes, float]], scheduled)

    def clear(self) -> None:
        self.client.delete(self.settings.queue, f"{self.settings.key_prefix}:scheduled")


@pytest.fixture(scope="module")
def site() -> Iterator[CallSite]:
    client = _real_redis_or_skip()
    made = CallSite(client)
    yield made
    made.clear()


offsets = st.timedeltas(min_value=timedelta(hours=-23, minutes=-59), max_value=timedelta(hours=23))
countdowns = st.one_of(
    st.none(),
    st.floats(),
    st.integers(-(10**6), 10**6),
    st.integers(min_value=10**12) | st.integers(max_value=-(10**12)),
    st.decimals(),
    st.booleans(),
    st.text(max_size=4),
    st.sampled_from([10**5000, float("inf"), float("nan"), Decimal("sNaN"), complex(1, 1)]),
)
etas = st.one_of(
    st.none(),
    st.datetimes(),
    st.datetimes(timezones=st.builds(timezone, offsets)),
    st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2200, 1, 1)),
    st.text(max_size=20),
    st.integers(),
    st.floats(),
)
options = st.fixed_dictionaries(
    {},
    optional={
        "task_id": st.none() | st.text(max_size=20),
        "expires": st.none() | st.integers() | st.floats() | st.datetimes(),
        "priority": st.integers(),
        "bogus": st.integers(),
    },
)
timestamps = st.one_of(st.none(), st.floats(), st.integers(), st.datetimes(), st.text(max_size=12))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(countdown=countdowns, eta=etas, extra=options, timestamp=timestamps)
def test_any_apply_async_options_publish_one_record_or_raise_our_error(
    site: CallSite, countdown: Any, eta: Any, extra: dict[str, Any], timestamp: Any
) -> None:
    site.clear()
    kwargs = {"timestamp": timestamp} if timestamp is not None else {}
    try:
        result = site.track.apply_async(
            ("openai::gpt-4o-mini", {"input_tokens": 3}),
            kwargs,
            countdown=countdown,
            eta=eta,
            **extra,
        )
    except AicmTasksError as exc:
        assert isinstance(exc, RecordError), exc
        assert site.published() == ([], []), "a refused record was published"
        return
    queued, scheduled = site.published()
    messages = queued + [message for message, _ in scheduled]
    assert len(messages) == 1, "exactly one record published"
    record = json.loads(messages[0])
    assert record["response_id"] == result.id
    assert math.isfinite(float(record["timestamp"]))
    for _, due in scheduled:
        assert math.isfinite(due), "a record scheduled never to be due"
        assert due > time.time() - 60


good = {"service_key": "openai::gpt-4o-mini", "usage": {"input_tokens": 1}}
entries = st.one_of(
    st.just(good),
    st.builds(lambda rid: {**good, "response_id": rid}, st.text(max_size=12)),
    st.builds(lambda ts: {**good, "timestamp": ts}, timestamps),
    st.builds(
        lambda usage: {**good, "usage": usage},
        st.integers() | st.dictionaries(st.text(max_size=3), st.floats()),
    ),
    st.just({"usage": {}}),
    st.just(["not", "a", "mapping"]),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records=st.lists(entries, max_size=30))
def test_track_many_publishes_all_of_its_records_or_none(
    site: CallSite, records: list[Any]
) -> None:
    site.clear()
    try:
        ids = site.track.many(records)
    except AicmTasksError as exc:
        assert isinstance(exc, RecordError), exc
        assert site.published() == ([], [])
        return
    queued, scheduled = site.published()
    assert scheduled == []
    assert sorted(json.loads(m)["response_id"] for m in queued) == sorted(ids)
    assert len(ids) == len(records)
