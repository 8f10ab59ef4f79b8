"""Key names and the stats hash's dead-letter fields, written and read in one place."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from aicm_tasks.broker.keys import (
    Keys,
    dead_lettered_by_reason,
    dead_lettered_field,
)

reasons = st.text(min_size=1, max_size=40)


@given(st.dictionaries(reasons, st.integers(min_value=1, max_value=10**9), max_size=6))
def test_dead_letter_counts_read_back_as_written_and_other_fields_are_ignored(
    counts: dict[str, int],
) -> None:
    stats = {dead_lettered_field(reason): n for reason, n in counts.items()}
    stats.update({"delivered": 7, "retried": 3, "dead_letters": 99})
    assert dead_lettered_by_reason(stats) == counts


def test_every_key_of_a_prefix_is_distinct_and_under_the_prefix() -> None:
    keys = Keys(queue="aicm.tracking", prefix="aicm")
    names = [
        keys.scheduled,
        keys.consumers,
        keys.dlq,
        keys.dlq_index,
        keys.stats,
        keys.seen,
        keys.names,
        keys.health,
        keys.redis_settings,
        keys.errors,
        keys.imported,
        keys.rate(17),
        keys.held("w1"),
        keys.batch("w1", 3),
    ]
    assert len(set(names)) == len(names)
    # `aicm-tasks demo` removes its keys with SCAN <prefix>:*; SWEEP finds batches by batch_prefix.
    assert all(name.startswith("aicm:") for name in names)
    assert keys.batch("w1", 3).startswith(keys.batch_prefix)
    assert not keys.held("w1").startswith(keys.batch_prefix)
