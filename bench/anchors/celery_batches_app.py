"""Anchor: celery-batches 0.11, up to 500 records a POST.

``celery -A bench.anchors.celery_batches_app worker --pool=prefork --concurrency=1``
with ``flush_every=500``, ``flush_interval=1.0`` and a prefetch multiplier of
1000: with Celery's default of 4 the worker holds at most 4 messages and only
the 1 s timer flushes (the anchors measured 4 records/s).
"""

from __future__ import annotations

from celery_batches import Batches, SimpleRequest

from bench.anchors.common import base_app, post_records, queue_name

TASK_NAME = "bench.batches.track"
FLUSH_EVERY = 500
FLUSH_INTERVAL_S = 1.0

app = base_app("bench_batches", queue_name("bench.batches"))
app.conf.update(worker_pool="prefork", worker_concurrency=1, worker_prefetch_multiplier=1000)


@app.task(base=Batches, name=TASK_NAME, flush_every=FLUSH_EVERY, flush_interval=FLUSH_INTERVAL_S)
def track(requests: list[SimpleRequest]) -> None:
    """Deliver a buffered batch of records in one POST."""
    post_records([request.args[0] for request in requests])
