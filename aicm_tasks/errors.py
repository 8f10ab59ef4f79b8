"""Every exception aicm-tasks raises, under one base class.

::

    AicmTasksError                      base of everything below
    ├── RecordError                     a record was refused at the call site (nothing published)
    │   ├── RecordValueError(ValueError)    a field has a bad value (unparseable timestamp, too big)
    │   └── RecordTypeError(TypeError)      a field has the wrong type (usage not a dict)
    ├── PublishError                    the broker did not take a valid record
    │   ├── RecordsRefusedError             ...the broker refused some records of a publish and took the others
    │   ├── SpoolFullError                  ...and the local spool is at AICM_SPOOL_MAX_BYTES, so it was not kept
    │   └── SpoolWriteError                 ...and the spool could not write it (disk full or failing, locked)
    ├── ConfigurationError              a setting is missing or inconsistent
    │   └── SettingsError(ValueError)       an AICM_* variable holds a value that cannot be used
    ├── DeadLetterNotFoundError(KeyError)  no dead letter has that id
    │   └── AmbiguousDeadLetterIdError      ...but the prefix given matches several
    ├── LocalRedisError                 no Redis answers and none could be started for the demo
    │   └── PortTakenError                  ...a local Redis Cluster node's port was taken before it started
    ├── ShardsDownError                 some shards' Redis did not answer: what needs them was not done
    ├── SettleError                     RabbitMQ refused a batch's retries or dead letters (the batch returns unacked)
    └── UsageLimitError                 a record (or a pre-flight check) matches a triggered usage limit
        └── UsageLimitExceeded              the class raised; also the SDK's ``UsageLimitExceeded``
                                            when ``aicostmanager`` is installed

Per-record delivery statuses are data (:class:`aicm_tasks.worker.outcomes.Fate`), not exceptions.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any


class AicmTasksError(Exception):
    """Base class of every aicm-tasks exception."""


class RecordError(AicmTasksError):
    """A record was refused before publishing; ``field`` names the culprit."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


class RecordValueError(RecordError, ValueError):
    """A record field holds a value that cannot be used (raised at the call site)."""


class RecordTypeError(RecordError, TypeError):
    """A record field has the wrong type (raised at the call site)."""


class PublishError(AicmTasksError):
    """The broker could not be reached or refused the record; it was not published."""


class RecordsRefusedError(PublishError):
    """The broker refused some records of one publish and took the others (RabbitMQ:
    a full queue nacks them). ``refused`` holds the refused messages, exactly as they
    were published: keep (spool) those, not the others, which are in the queue."""

    def __init__(self, message: str, refused: Sequence[bytes]) -> None:
        super().__init__(message)
        self.refused = list(refused)


class SpoolFullError(PublishError):
    """The broker is unreachable and the spool is at ``AICM_SPOOL_MAX_BYTES``."""


class SpoolWriteError(PublishError):
    """The broker is unreachable and the spool could not write the record (a full or
    failing disk, a file-size limit, the spool locked past the publish timeout).
    Records spooled before stay in the spool."""


class ConfigurationError(AicmTasksError):
    """A setting is missing or inconsistent (for example no API key on a worker)."""


class SettingsError(ConfigurationError, ValueError):
    """An ``AICM_*`` variable holds a value that cannot be used; raised when the
    settings are read (the first use of ``track``, a worker's start, any CLI
    command). The message is one line per variable naming it
    (``AICM_BATCH_SIZE must be at most 1000``) and never echoes the value;
    ``variables`` lists the names."""

    def __init__(self, message: str, variables: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.variables = variables


class DeadLetterNotFoundError(AicmTasksError, KeyError):
    """No dead letter is stored under the given id (or id prefix)."""

    def __str__(self) -> str:  # KeyError would print the repr of the id
        return str(self.args[0]) if self.args else "dead letter not found"


class AmbiguousDeadLetterIdError(DeadLetterNotFoundError):
    """An id prefix matches more than one dead letter; ``candidates`` holds a few."""

    def __init__(self, message: str, candidates: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.candidates = candidates


class LocalRedisError(AicmTasksError):
    """No Redis answers at the broker URL and none could be started locally."""


class PortTakenError(LocalRedisError):
    """A local Redis Cluster node's port (or its bus port) was taken between its
    choice and its start (``aicm_tasks.devtools.redis_cluster``)."""


class ShardsDownError(AicmTasksError):
    """Some shards' Redis did not answer, and what was asked needs them (every
    shard's figures, a dead letter not found on the others); ``down`` maps each
    such shard's number to its error."""

    def __init__(self, message: str, down: dict[int, str]) -> None:
        super().__init__(message)
        self.down = down


class SettleError(AicmTasksError):
    """RabbitMQ refused (nacked or returned) a batch's retries or dead letters:
    the batch is not acknowledged, so RabbitMQ delivers it again."""


class UsageLimitError(AicmTasksError):
    """A record matches a triggered usage limit (``AICM_LIMITS_ENABLED``), or
    :func:`aicm_tasks.check_limits` found one. ``triggered_limits`` lists them
    (:class:`aicm_tasks.limits.TriggeredLimit`). A record that raised this was
    still published, as the SDK does: the caller learns it must stop."""

    def __init__(self, triggered_limits: Sequence[Any]) -> None:
        self.triggered_limits = list(triggered_limits)
        described = ", ".join(
            f"limit {limit.limit_id} ({limit.threshold_type})" for limit in self.triggered_limits
        )
        # The SDK's wording, so that logs read the same after a switch. Exception's
        # own __init__, not super(): with the SDK's class among the bases, the
        # next __init__ in the MRO would be the SDK's, which takes the list.
        Exception.__init__(self, f"Usage limit exceeded: {described}")


if TYPE_CHECKING:

    class UsageLimitExceeded(UsageLimitError):
        """What is raised: a :class:`UsageLimitError`, and the SDK's exception of that name."""


def __getattr__(name: str) -> Any:
    # PEP 562: UsageLimitExceeded is built on first use, because subclassing the
    # SDK's class means importing the SDK (about 0.25 s here), which neither
    # `import aicm_tasks` nor a process without limits should pay.
    if name == "UsageLimitExceeded":
        return usage_limit_exceeded_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


#: One class for the whole process: two threads building it at once would make
#: two, and ``except`` of one would not catch the other.
_CLASS_LOCK = threading.Lock()


def usage_limit_exceeded_class() -> type[UsageLimitError]:
    """The class raised for a triggered limit: a subclass of the SDK's
    ``aicostmanager.client.exceptions.UsageLimitExceeded`` when the SDK is
    installed (so ``except UsageLimitExceeded`` written for the SDK still
    catches it), of :class:`UsageLimitError` always."""
    with _CLASS_LOCK:
        return _build_class()


@functools.cache
def _build_class() -> type[UsageLimitError]:
    try:
        from aicostmanager.client.exceptions import UsageLimitExceeded as SdkUsageLimitExceeded
    except ImportError:
        bases: tuple[type, ...] = (UsageLimitError,)
    else:
        bases = (UsageLimitError, SdkUsageLimitExceeded)
    doc = "A record matches a triggered usage limit (see UsageLimitError)."
    made = type("UsageLimitExceeded", bases, {"__doc__": doc, "__module__": __name__})
    return made
