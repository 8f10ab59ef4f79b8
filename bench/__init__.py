"""Benchmarks for aicm-tasks against its anchors (plain Celery, celery-batches, the SDK).

Entry point: ``python -m bench.run`` (``make bench``). See ``bench/README.md``.
"""
