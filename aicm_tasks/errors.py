"""Every exception aicm-tasks raises, under one base class.

::

    AicmTasksError                      base of everything below
    ├── RecordError                     a record was refused at the call site (nothing published)
    │   ├── RecordValueError(ValueError)    a field has a bad value (unparseable timestamp, too big)
    │   └── RecordTypeError(TypeError)      a field has the wrong type (usage not a dict)
    ├── PublishError                    the broker did not take a valid record
    │   ├── SpoolFullError                  ...and the local spool is at AICM_SPOOL_MAX_BYTES, so it was not kept
    │   └── SpoolWriteError                 ...and the spool could not write it (disk full or failing, locked)
    ├── ConfigurationError              a setting is missing or inconsistent
    │   └── SettingsError(ValueError)       an AICM_* variable holds a value that cannot be used
    ├── DeadLetterNotFoundError(KeyError)  no dead letter has that id
    │   └── AmbiguousDeadLetterIdError      ...but the prefix given matches several
    └── LocalRedisError                 no Redis answers and none could be started for the demo

Per-record delivery statuses are data (:class:`aicm_tasks.worker.outcomes.Fate`), not exceptions.
"""

from __future__ import annotations


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
