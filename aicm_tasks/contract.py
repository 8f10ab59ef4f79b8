"""The ``/track`` contract once: limits, statuses, field names and the rules of a record.

Both sides use this module: the call site (``producer/record.py``) refuses a record the
contract refuses before anything is published, and the local server
(``server/validation.py``, ``server/track.py``) answers ``error`` for exactly
the same records. Pure Python, importing nothing of aicm-tasks, so either side
may import it.

A record, as the contract and this project accept it (``docs/local-server.md``
lists the same rules):

- ``service_key``: ``vendor::service``, split at the first ``::``, both halves
  non-empty and not only whitespace; at most :data:`MAX_KEY_LENGTH` characters.
- ``response_id``: a non-empty string of at most :data:`MAX_RESPONSE_ID_LENGTH`.
- ``timestamp``: epoch seconds as a plain decimal string (:data:`TIMESTAMP_PATTERN`,
  never ``1e+16``), from :data:`MIN_TIMESTAMP_S` to :data:`MAX_TIMESTAMP_S`.
- ``payload`` (the caller's ``usage``): a JSON object; ``context``: a JSON object
  or null; ``customer_key``: a string of at most :data:`MAX_KEY_LENGTH` or null.
- ``payload`` and ``context`` nest at most :data:`MAX_NESTING_DEPTH` levels.
- No string anywhere in the record (keys included) holds NUL or an unpaired
  surrogate: PostgreSQL ``text`` refuses the first, UTF-8 cannot carry the second.
- Token counts (:data:`TOKEN_COUNT_PATHS`, how ``usage.py`` reads a payload) are
  integers from 0 to :data:`MAX_TOKEN_COUNT` when present, and consistent: cached
  tokens within input, reasoning tokens within output. A count that is null, or
  ``{}`` (the official SDK's placeholder for an unset count: its usage extractors
  serialise every ``None`` as ``{}``), is absent; :func:`without_placeholders`
  is the payload without those ``{}``, which the call site publishes.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any, Literal

from aicm_tasks.json_values import MAX_NESTING_DEPTH, text_problem, value_problem
from aicm_tasks.usage import (
    PART_COUNT_PATHS,
    TOKEN_COUNT_PATHS,
    TokenCounts,
    UsageError,
    sound_flat_counts,
    token_counts,
    without_placeholders,
)

__all__ = [
    "FIELDS",
    "MAX_KEY_LENGTH",
    "MAX_NESTING_DEPTH",
    "MAX_RECORDS_PER_REQUEST",
    "MAX_RESPONSE_ID_LENGTH",
    "MAX_TIMESTAMP_S",
    "MAX_TOKEN_COUNT",
    "MIN_TIMESTAMP_S",
    "SDK_FIELDS",
    "SERVICE_KEY_SEPARATOR",
    "STATUSES",
    "STATUS_COMPLETED",
    "STATUS_ERROR",
    "STATUS_QUEUED",
    "STATUS_SERVICE_KEY_UNKNOWN",
    "TIMESTAMP_PATTERN",
    "TOKEN_COUNT_PATHS",
    "Problem",
    "checked_record",
    "format_timestamp",
    "key_problem",
    "record_problems",
    "service_key_problem",
    "split_service_key",
    "text_problem",
    "timestamp_problem",
    "value_problem",
    "without_placeholders",
]

#: The contract's limit on records in one ``POST /track`` request.
MAX_RECORDS_PER_REQUEST = 1000
#: Statuses of a record's result.
STATUS_QUEUED = "queued"
STATUS_COMPLETED = "completed"
STATUS_SERVICE_KEY_UNKNOWN = "service_key_unknown"
STATUS_ERROR = "error"
#: Every per-record status, in the contract's order.
STATUSES = (STATUS_QUEUED, STATUS_COMPLETED, STATUS_SERVICE_KEY_UNKNOWN, STATUS_ERROR)
#: A record's fields (others are ignored by the server, never written by the call site).
FIELDS = ("service_key", "response_id", "timestamp", "payload", "customer_key", "context")

#: The official SDK's record fields (its ``Tracker`` and its SQLite queue), by
#: the name ``track`` gives each: the SDK says ``payload`` for ``usage``.
SDK_FIELDS = {
    "service_key": "service_key",
    "payload": "usage",
    "response_id": "response_id",
    "timestamp": "timestamp",
    "customer_key": "customer_key",
    "context": "context",
}
#: Separator between vendor and service in a service key.
SERVICE_KEY_SEPARATOR = "::"
#: Ways the local server's ledger API (``GET /api/v1/costs?group_by=``) groups
#: costs; the CLI offers the same choices without loading the server.
COST_GROUP_BY = ("day", "week", "month", "provider", "model", "service", "customer")
#: What an API-key alias (``AICM_API_KEYS``, ``api_key_alias=``) may look like:
#: a short name, safe in logs and metrics. Never sent: it picks the worker's key.
API_KEY_ALIAS_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
#: Longest response_id accepted; the server keys events on it.
MAX_RESPONSE_ID_LENGTH = 255
#: Longest service_key / customer_key accepted.
MAX_KEY_LENGTH = 255

#: Earliest timestamp accepted: 2000-01-01T00:00:00Z. No LLM bill is older; a
#: smaller number is a duration or ``time.monotonic()``, not a time since the epoch.
MIN_TIMESTAMP_S = 946_684_800
#: Latest timestamp accepted: 2100-01-01T00:00:00Z. A millisecond epoch (1.7e12 in
#: 2024) is far past it. Every float in the range prints as plain digits (``repr``
#: switches to an exponent only at 1e16), and its UTC day is a valid date.
MAX_TIMESTAMP_S = 4_102_444_800
#: The wire form of a timestamp: decimal digits, optionally a fraction.
TIMESTAMP_PATTERN = re.compile(r"\d+(?:\.\d+)?")

#: Largest token count accepted in one record: a billion, 100 x the largest
#: context window on sale (10 M tokens). The ledger keeps costs as 64-bit
#: nano-dollars: at the catalog's dearest rate ($600 per million output tokens,
#: o1-pro) a record at this bound in every count costs under $4 M (4e15 nano-USD),
#: so a record's cost and a day's rollup of thousands of such records fit in
#: 2**63 (9.2e18). At 2**63 - 1 one record would overflow the cost column.
MAX_TOKEN_COUNT = 1_000_000_000


@dataclass(frozen=True, slots=True)
class Problem:
    """Why a record breaks the contract: the field, the problem, and its kind.

    ``kind`` is ``"type"`` for a value of the wrong JSON type and ``"value"`` for
    a value of the right type that is out of bounds; the call site raises
    ``RecordTypeError`` or ``RecordValueError`` accordingly.
    """

    field: str
    message: str
    kind: Literal["type", "value"] = "value"

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


def type_name(value: Any) -> str:
    """The JSON-ish name of ``value``'s type for messages (``null`` for None)."""
    return "null" if value is None else type(value).__name__


def split_service_key(service_key: str) -> tuple[str, str] | None:
    """Split ``vendor::service`` into its two parts, or None if either is blank."""
    vendor, sep, service = service_key.partition(SERVICE_KEY_SEPARATOR)
    if not sep or not vendor.strip() or not service.strip():
        return None
    return vendor, service


def timestamp_problem(seconds: float) -> str | None:
    """Why ``seconds`` (epoch seconds) is outside the contract's range, or None."""
    if seconds != seconds:  # NaN
        return "is not a number"
    if MIN_TIMESTAMP_S <= seconds <= MAX_TIMESTAMP_S:
        return None
    if seconds > MAX_TIMESTAMP_S:
        for unit, factor in (("milliseconds", 1e3), ("microseconds", 1e6), ("nanoseconds", 1e9)):
            if MIN_TIMESTAMP_S <= seconds / factor <= MAX_TIMESTAMP_S:
                return (
                    f"{seconds!r} is after 2100-01-01; it looks like {unit} since the epoch: "
                    f"divide by {factor:,.0f} to give seconds"
                )
        return f"{seconds!r} is after 2100-01-01; give seconds since the epoch"
    return (
        f"{seconds!r} is before 2000-01-01; give seconds since the epoch (time.time() "
        "or a datetime), not a duration or time.monotonic()"
    )


def format_timestamp(seconds: float) -> str:
    """The wire form of ``seconds`` (already in range): shortest round-trip decimal digits.

    ``repr`` of a float in the range never uses an exponent (see
    :data:`MAX_TIMESTAMP_S`), so the result always matches :data:`TIMESTAMP_PATTERN`.
    """
    return repr(float(seconds))


#: TOKEN_COUNT_PATHS split for one pass over a payload's keys: top-level names,
#: and per parent object the names inside it. A pass over the (few) keys a
#: payload has costs 0.4 µs; a lookup of every path, 2.4 µs.
_TOP_COUNTS = frozenset(path for path in TOKEN_COUNT_PATHS if isinstance(path, str))
_NESTED_COUNTS: dict[str, tuple[str, ...]] = {}
for _path in TOKEN_COUNT_PATHS:
    if isinstance(_path, tuple):
        _NESTED_COUNTS[_path[0]] = (*_NESTED_COUNTS.get(_path[0], ()), _path[1])
_PART_COUNTS = frozenset(".".join(p) if isinstance(p, tuple) else p for p in PART_COUNT_PATHS)


def _count_problem(field: str, name: str, value: Any) -> Problem | None:
    # bool is an int subclass in Python but not a count.
    if type(value) is not int:
        return Problem(field, f"{name} must be an integer", "type")
    if value < 0:
        return Problem(field, f"{name} must not be negative")
    if value > MAX_TOKEN_COUNT:
        return Problem(
            field,
            f"{name} is {value}, over the limit of {MAX_TOKEN_COUNT:,} tokens in one record; "
            "send one record per request",
        )
    return None


def _count_problems(
    payload: dict[Any, Any], field: str, problems: list[Problem], *, counts: bool
) -> TokenCounts | None:
    """Add the problems of the token counts in ``payload`` to ``problems``; then, if
    they are sound, of their consistency. With ``counts``, return the payload's
    :class:`TokenCounts` when it has no problem (read once, for the server)."""
    before = len(problems)
    found: list[str] = []
    for key, value in payload.items():
        if key in _TOP_COUNTS:
            # Null and the SDK's {} stand for an unset count (module docstring).
            if value is not None and not (type(value) is dict and not value):
                found.append(key)
                problem = _count_problem(field, key, value)
                if problem is not None:
                    problems.append(problem)
        elif key in _NESTED_COUNTS and isinstance(value, dict):
            for child in _NESTED_COUNTS[key]:
                item = value.get(child)
                if item is not None and not (type(item) is dict and not item):
                    name = f"{key}.{child}"
                    found.append(name)
                    problem = _count_problem(field, name, item)
                    if problem is not None:
                        problems.append(problem)
    if len(problems) > before:
        return None
    # Cached within input, reasoning within output: only parts can break it, so a
    # plain {input, output} payload skips token_counts (3 µs on the call site's path).
    if counts or not _PART_COUNTS.isdisjoint(found):
        try:
            return token_counts(payload)
        except UsageError as exc:
            problems.append(Problem(field, str(exc)))
    return None


def _key_problem(field: str, value: Any, *, limit: int, required: bool) -> Problem | None:
    if not isinstance(value, str):
        nullable = "" if required else " or null"
        return Problem(field, f"must be a string{nullable}, not {type_name(value)}", "type")
    if required and not value.strip():
        return Problem(field, "must not be empty")
    if len(value) > limit:
        return Problem(field, f"is {len(value)} characters, at most {limit} allowed")
    problem = text_problem(value)
    return None if problem is None else Problem(field, problem)


def _plain_key(value: Any, limit: int) -> bool:
    """True for the usual id or key, which :func:`_key_problem` would pass: a short
    ASCII string without NUL, not blank. Decided in one expression (~0.15 µs, a
    call of _key_problem ~0.5 µs); anything else goes to _key_problem."""
    return (
        type(value) is str
        and 0 < len(value) <= limit
        and value.isascii()
        and "\x00" not in value
        and not value.isspace()
    )


def service_key_problem(service_key: Any) -> Problem | None:
    """Why ``service_key`` is not a contract service key (``vendor::service``), or None."""
    problem = _key_problem("service_key", service_key, limit=MAX_KEY_LENGTH, required=True)
    if problem is None and split_service_key(service_key) is None:
        problem = Problem(
            "service_key",
            f"{service_key!r} is not of the form 'vendor::service' "
            "(both halves non-empty, e.g. 'openai::gpt-4o-mini')",
        )
    return problem


#: service_key_problem of a string, remembered: a process sees few service keys,
#: and checking one costs ~0.8 µs of a record's ~5 µs of checks (a hit, ~0.1 µs).
#: Bounded, so a flood of distinct junk keys cannot grow it.
_string_service_key_problem = functools.lru_cache(maxsize=1024)(service_key_problem)


def key_problem(field: str, value: Any, *, required: bool) -> Problem | None:
    """Why ``value`` is not a valid ``response_id`` / ``customer_key`` (``field``), or None.

    ``required``: it must be a non-blank string; otherwise any string (None is
    handled by the caller). Length, NUL and surrogates are checked for both.
    """
    limit = MAX_RESPONSE_ID_LENGTH if field == "response_id" else MAX_KEY_LENGTH
    return _key_problem(field, value, limit=limit, required=required)


def record_problems(record: Any, *, payload_field: str = "payload") -> list[Problem]:
    """Every way ``record`` (a decoded contract record) breaks the contract; empty if none.

    Fields beyond the contract's are ignored. ``payload_field`` names the
    payload in the problems (the call site says ``usage``, its argument's name).
    """
    return _check(record, payload_field, counts=False)[0]


def checked_record(record: Any) -> tuple[list[Problem], TokenCounts | None]:
    """:func:`record_problems` and, for a record without any, its payload's token counts.

    The server's form: it needs the counts of every valid record, and reading
    them here, where the checks read them anyway, saves a second pass (~1.5 µs).
    """
    problems, counts = _check(record, "payload", counts=True)
    return problems, None if problems else counts


def _check(
    record: Any, payload_field: str, *, counts: bool
) -> tuple[list[Problem], TokenCounts | None]:
    if not isinstance(record, dict):
        return [Problem("record", f"must be a JSON object, not {type_name(record)}", "type")], None
    problems: list[Problem] = []
    tokens: TokenCounts | None = None

    service_key = record.get("service_key")
    if type(service_key) is str:
        problem = _string_service_key_problem(service_key)
    else:
        problem = service_key_problem(service_key)
    if problem is not None:
        problems.append(problem)

    response_id = record.get("response_id")
    if not _plain_key(response_id, MAX_RESPONSE_ID_LENGTH):
        problem = _key_problem(
            "response_id", response_id, limit=MAX_RESPONSE_ID_LENGTH, required=True
        )
        if problem is not None:
            problems.append(problem)

    timestamp = record.get("timestamp")
    if not isinstance(timestamp, str):
        problems.append(
            Problem(
                "timestamp",
                f"must be a string of epoch seconds, not {type_name(timestamp)}",
                "type",
            )
        )
    elif TIMESTAMP_PATTERN.fullmatch(timestamp) is None:
        problems.append(
            Problem(
                "timestamp",
                f"{timestamp[:40]!r} is not a decimal number of seconds since the epoch",
            )
        )
    elif not MIN_TIMESTAMP_S <= float(timestamp) <= MAX_TIMESTAMP_S:  # in range: no call
        problems.append(Problem("timestamp", str(timestamp_problem(float(timestamp)))))

    payload = record.get("payload")
    if not isinstance(payload, dict):
        problems.append(
            Problem(payload_field, f"must be a JSON object, not {type_name(payload)}", "type")
        )
    else:
        tokens = sound_flat_counts(payload, MAX_TOKEN_COUNT)
        if tokens is None:
            problems.extend(_nested_problems(payload_field, payload))
            tokens = _count_problems(payload, payload_field, problems, counts=counts)

    customer_key = record.get("customer_key")
    if customer_key is not None and not _plain_key(customer_key, MAX_KEY_LENGTH):
        problem = _key_problem("customer_key", customer_key, limit=MAX_KEY_LENGTH, required=False)
        if problem is not None:
            problems.append(problem)

    context = record.get("context")
    if context is not None:
        if not isinstance(context, dict):
            problems.append(
                Problem(
                    "context", f"must be a JSON object or null, not {type_name(context)}", "type"
                )
            )
        else:
            problems.extend(_nested_problems("context", context))
    return problems, tokens


def _nested_problems(field: str, value: dict[str, Any]) -> list[Problem]:
    found = value_problem(value)
    if found is None:
        return []
    where, problem = found
    return [Problem(field, f"{where} {problem}" if where else problem)]
