"""The anchors aicm-tasks is compared with: plain Celery, celery-batches, the official SDK."""
