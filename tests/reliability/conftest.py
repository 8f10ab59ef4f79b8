"""The fault suite: real Redis, two workers, the local server, faults in between.

Run on its own with ``make test-reliability`` (``pytest -m reliability``).
Each scenario appends its accounting to ``.results.jsonl``; the table is
printed at the end of the run.
"""

from __future__ import annotations

import pytest

from tests.support.pipeline import local_server, pipeline, pipeline_factory, private_redis

__all__ = ["local_server", "pipeline", "pipeline_factory", "private_redis"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/reliability" in str(item.fspath):
            item.add_marker(pytest.mark.reliability)
            item.add_marker(pytest.mark.integration)
