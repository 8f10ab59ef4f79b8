"""aicm-tasks: LLM-usage tracking off the request path, delivered by Celery workers.

``track.delay(service_key, usage, customer_key=..., context=...)`` validates a
record in the caller's process and publishes it in one Redis round trip; a
``celery -A aicm_tasks worker`` pool delivers records in batches to the
AICostManager-compatible ``/track`` endpoint and dead-letters what is refused.

Importing the package loads no Celery and reads no environment: ``app``,
``track``, ``track_many`` and ``settings`` are built from the ``AICM_*``
variables on first use of any of them, which is also how
``celery -A aicm_tasks`` finds ``app``; the other names are imported on first
use (PEP 562 module ``__getattr__``).
"""

from __future__ import annotations

import importlib
import sys
import threading
import types
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from aicm_tasks.errors import (
    AicmTasksError,
    ConfigurationError,
    DeadLetterNotFoundError,
    PublishError,
    RecordError,
    RecordTypeError,
    RecordValueError,
    SettingsError,
    UsageLimitError,
)

if TYPE_CHECKING:
    from aicm_tasks.app import AicmCelery, create_app
    from aicm_tasks.errors import UsageLimitExceeded
    from aicm_tasks.limits import TriggeredLimit
    from aicm_tasks.producer.aio import track_async, track_many_async
    from aicm_tasks.producer.limits import check_limits, check_limits_async
    from aicm_tasks.producer.llm import (
        track_llm_stream_usage,
        track_llm_stream_usage_async,
        track_llm_usage,
        track_llm_usage_async,
    )
    from aicm_tasks.producer.sdk import CeleryDelivery
    from aicm_tasks.settings import Settings
    from aicm_tasks.tasks import TrackTask

    # What type checkers see; at run time these are properties of _Package.
    app: AicmCelery
    track: TrackTask
    track_many: Callable[..., list[str]]
    settings: Settings

__version__ = "0.1.0"

#: Names imported on first use, so that ``import aicm_tasks`` loads neither
#: Celery nor the official SDK (the extra ``aicm-tasks[sdk]``, which
#: ``CeleryDelivery`` and ``track_llm_*`` need) and reads no environment.
_LAZY_NAMES = {
    "AicmCelery": "aicm_tasks.app",
    "create_app": "aicm_tasks.app",
    "Settings": "aicm_tasks.settings",
    "TrackTask": "aicm_tasks.tasks",
    "track_async": "aicm_tasks.producer.aio",
    "track_many_async": "aicm_tasks.producer.aio",
    "CeleryDelivery": "aicm_tasks.producer.sdk",
    "track_llm_usage": "aicm_tasks.producer.llm",
    "track_llm_usage_async": "aicm_tasks.producer.llm",
    "track_llm_stream_usage": "aicm_tasks.producer.llm",
    "track_llm_stream_usage_async": "aicm_tasks.producer.llm",
    "check_limits": "aicm_tasks.producer.limits",
    "check_limits_async": "aicm_tasks.producer.limits",
    "TriggeredLimit": "aicm_tasks.limits",
    # Built on first use: a subclass of the SDK's class when the SDK is installed.
    "UsageLimitExceeded": "aicm_tasks.errors",
}


def __getattr__(name: str) -> Any:
    # PEP 562: called only for names not in the module's namespace.
    module = _LAZY_NAMES.get(name)
    if module is None:
        raise AttributeError(f"module 'aicm_tasks' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


class _DefaultApp:
    """The package's app, built from ``AICM_*`` once, on first use."""

    #: Two threads touching ``track`` first at once must not build two apps (two
    #: publishers, two spools on one directory).
    _lock = threading.Lock()
    _built: tuple[AicmCelery, TrackTask] | None = None

    @classmethod
    def get(cls) -> tuple[AicmCelery, TrackTask]:
        if cls._built is None:
            with cls._lock:
                if cls._built is None:
                    from aicm_tasks.app import create_app
                    from aicm_tasks.tasks import TrackTask

                    built = create_app()
                    # Registered by create_app: the registry is typed for any task.
                    cls._built = (built, cast(TrackTask, built.tasks[TrackTask.name]))
        return cls._built


class _Package(types.ModuleType):
    """This module's class: ``app``, ``track``, ``track_many`` and ``settings`` are
    properties, so they are built on first use.

    Properties and not PEP 562 ``__getattr__``: ``aicm_tasks.app`` and
    ``aicm_tasks.settings`` are also submodules, and importing a submodule sets it
    as an attribute of its package, which would then hide the name from
    ``__getattr__`` (and hand ``celery -A aicm_tasks`` a module, not the app).
    The setters drop that assignment; ``from aicm_tasks.app import create_app``
    still works (it reads ``sys.modules``).
    """

    @property
    def app(self) -> AicmCelery:
        """The Celery app; ``celery -A aicm_tasks worker`` runs it."""
        try:
            return _DefaultApp.get()[0]
        except SettingsError as exc:
            _exit_if_loaded_by_celery(exc, sys._getframe(1))
            raise

    @app.setter
    def app(self, value: object) -> None:
        _drop_submodule("app", value)

    @property
    def track(self) -> TrackTask:
        """The tracking task: ``track.delay(service_key, usage, ...)``."""
        return _DefaultApp.get()[1]

    @property
    def track_many(self) -> Callable[..., list[str]]:
        """Publish many records in one round trip: ``track_many([{...}, ...])``."""
        return _DefaultApp.get()[1].many

    @property
    def settings(self) -> Settings:
        """The settings the app was built with, read from ``AICM_*`` variables."""
        return _DefaultApp.get()[0].aicm_settings

    @settings.setter
    def settings(self, value: object) -> None:
        _drop_submodule("settings", value)


def _exit_if_loaded_by_celery(error: SettingsError, caller: types.FrameType) -> None:
    """End a ``celery -A aicm_tasks ...`` process with the error's one line, exit code 2.

    Celery's command line prints any exception raised while it loads ``-A``
    with its whole traceback under "Unable to load celery application"
    (celery/bin/celery.py catches Exception); SystemExit passes through it and
    click. Only when Celery's ``find_app`` is the caller: a library user
    touching ``aicm_tasks.app`` gets the SettingsError itself.
    """
    if caller.f_globals.get("__name__") == "celery.app.utils":
        sys.stderr.write(f"aicm-tasks: {error}\n")
        raise SystemExit(2)


def _drop_submodule(name: str, value: object) -> None:
    if not isinstance(value, types.ModuleType):
        raise AttributeError(f"aicm_tasks.{name} is read-only")


sys.modules[__name__].__class__ = _Package

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
    "SettingsError",
    "TrackTask",
    "TriggeredLimit",
    "UsageLimitError",
    "UsageLimitExceeded",
    "__version__",
    "app",
    "check_limits",
    "check_limits_async",
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
