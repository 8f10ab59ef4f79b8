"""Anchor: plain Celery, one task per record, one POST per record.

``celery -A bench.anchors.celery_plain worker --pool=prefork --concurrency=2``
(as the anchor figures were taken). Configured by ``BENCH_BROKER_URL``,
``BENCH_QUEUE`` and ``BENCH_TRACK_URL``.
"""

from __future__ import annotations

from typing import Any

from bench.anchors.common import base_app, post_records, queue_name

#: The task's registered name (the cloned messages carry it).
TASK_NAME = "bench.plain.track"

app = base_app("bench_plain", queue_name("bench.plain"))
app.conf.update(worker_pool="prefork", worker_concurrency=2)


@app.task(name=TASK_NAME)
def track(record: dict[str, Any]) -> None:
    """Deliver one record in its own POST."""
    post_records([record])
