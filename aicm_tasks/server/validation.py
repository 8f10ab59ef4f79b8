"""Per-record validation of a ``POST /track`` record: the contract's rules as error strings.

The rules themselves are in :mod:`aicm_tasks.contract`, shared with the call
site, so the server answers ``error`` for exactly the records ``track.delay``
refuses. Here they become the contract's error strings, ``field: problem``
(``"payload: input_tokens must be an integer"``).
"""

from __future__ import annotations

from typing import Any

from aicm_tasks.contract import TOKEN_COUNT_PATHS, checked_record, record_problems
from aicm_tasks.usage import TokenCounts

#: Payload fields (and ``parent.child`` paths) that count tokens; when present
#: they must be integers from 0 to ``contract.MAX_TOKEN_COUNT``.
TOKEN_FIELDS = tuple(
    ".".join(path) if isinstance(path, tuple) else path for path in TOKEN_COUNT_PATHS
)


def validate_record(obj: Any) -> list[str]:
    """Return the reasons ``obj`` is not a valid contract record; empty if it is.

    Each reason is ``"<field>: <problem>"``. Fields beyond the contract's are
    ignored. Null token counts, and the official SDK's ``{}`` placeholders,
    count as absent.
    """
    return [str(problem) for problem in record_problems(obj)]


def validate_and_count(obj: Any) -> tuple[list[str], TokenCounts | None]:
    """:func:`validate_record` and, when ``obj`` is valid, its token counts (read once)."""
    problems, counts = checked_record(obj)
    if not problems:  # the usual case, without a comprehension over nothing
        return [], counts
    return [str(problem) for problem in problems], counts
