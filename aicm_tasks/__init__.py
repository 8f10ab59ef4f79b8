"""aicm-tasks: LLM-usage tracking off the request path, delivered by Celery workers.

``track.delay(service_key, usage, customer_key=..., context=...)`` validates a
record in the caller's process and publishes it in one Redis round trip; a
``celery -A aicm_tasks worker`` pool delivers records in batches to the
AICostManager-compatible ``/track`` endpoint and dead-letters what is refused.
"""

from __future__ import annotations

from typing import Any

from aicm_tasks.app import AicmCelery, create_app
from aicm_tasks.errors import (
    AicmTasksError,
    ConfigurationError,
    DeadLetterNotFoundError,
    PublishError,
    RecordError,
    RecordTypeError,
    RecordValueError,
)
from aicm_tasks.producer.aio import track_async, track_many_async
from aicm_tasks.settings import Settings
from aicm_tasks.tasks import TrackTask

__version__ = "0.1.0"

#: The Celery app; ``celery -A aicm_tasks worker`` runs it.
app: AicmCelery = create_app()
#: The tracking task: ``track.delay(service_key, usage, ...)``.
track: TrackTask = app.tasks[TrackTask.name]
#: Publish many records in one round trip: ``track_many([{...}, ...])``.
track_many = track.many
#: The settings the app was built with, read from ``AICM_*`` variables at import.
settings: Settings = app.aicm_settings

#: Names that need the official SDK (the extra ``aicm-tasks[sdk]``), imported on
#: first use so that ``import aicm_tasks`` works without it.
_SDK_NAMES = {
    "CeleryDelivery": "aicm_tasks.producer.sdk",
    "track_llm_usage": "aicm_tasks.producer.llm",
    "track_llm_usage_async": "aicm_tasks.producer.llm",
    "track_llm_stream_usage": "aicm_tasks.producer.llm",
    "track_llm_stream_usage_async": "aicm_tasks.producer.llm",
}


def __getattr__(name: str) -> Any:
    module = _SDK_NAMES.get(name)
    if module is None:
        raise AttributeError(f"module 'aicm_tasks' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


__all__ = [
    "AicmCelery",
    "AicmTasksError",
    "CeleryDelivery",
    "ConfigurationError",
    "DeadLetterNotFoundError",
    "PublishError",
    "RecordError",
    "RecordTypeError",
    "RecordValueError",
    "Settings",
    "TrackTask",
    "__version__",
    "app",
    "create_app",
    "settings",
    "track",
    "track_async",
    "track_llm_stream_usage",
    "track_llm_stream_usage_async",
    "track_llm_usage",
    "track_llm_usage_async",
    "track_many",
    "track_many_async",
]
