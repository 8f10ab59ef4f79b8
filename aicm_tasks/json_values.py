"""Text and nesting of JSON values: what the strings and structures of a record may hold.

Part of the ``/track`` contract (:mod:`aicm_tasks.contract` re-exports every
name here), kept apart because it is about JSON values in general, not about
records: pure Python, importing nothing of aicm-tasks.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["MAX_NESTING_DEPTH", "text_problem", "value_problem"]

#: Deepest nesting of ``payload`` and ``context`` (the object itself is level 1).
#: Far below every supported Python's JSON recursion limit (about 1,000 on
#: 3.10-3.11, the C stack limit on 3.12+), so no worker or server parse of a
#: record accepted here can hit it, whichever Python runs it.
MAX_NESTING_DEPTH = 32

_SURROGATES = re.compile("[\ud800-\udfff]")
#: JSON values with nothing inside to check.
_SCALARS = frozenset({int, float, bool, type(None)})


def text_problem(text: str) -> str | None:
    """Why ``text`` cannot be stored as text (NUL, unpaired surrogate), or None."""
    if "\x00" in text:
        return "contains a NUL character (U+0000), which PostgreSQL cannot store; remove it"
    if not text.isascii():
        match = _SURROGATES.search(text)
        if match is not None:
            return (
                f"contains an unpaired surrogate (U+{ord(match.group()):04X}), which is not "
                "valid Unicode and cannot be sent as UTF-8; decode the text properly"
            )
    return None


def value_problem(value: Any, depth: int = 1) -> tuple[str, str] | None:
    """The first string or nesting problem inside a JSON value: ``(where, problem)``, or None.

    ``where`` is a path such as ``['messages'][0]``; ``depth`` is the level of
    ``value`` itself (a payload object is level 1). Objects and arrays (dicts,
    lists, tuples) deeper than :data:`MAX_NESTING_DEPTH` are refused; types JSON
    cannot carry are left to the serialiser.
    """
    if isinstance(value, str):
        problem = text_problem(value)
        return None if problem is None else ("", problem)
    if isinstance(value, dict):
        items: Any = value.items()
    elif isinstance(value, list | tuple):
        items = enumerate(value)
    else:
        return None
    if depth > MAX_NESTING_DEPTH:
        return (
            "",
            f"nests deeper than {MAX_NESTING_DEPTH} levels of objects and arrays "
            "(or contains itself); flatten it",
        )
    for key, item in items:
        # Plain ASCII keys and numbers are the usual case: decided here, without
        # a call per item (a usage of six counts checks in ~0.8 µs, not ~2.2).
        if isinstance(key, str) and ("\x00" in key or not key.isascii()):
            problem = text_problem(key)
            if problem is not None:
                return (f"[{key!r}]", f"has a key that {problem}")
        kind = type(item)
        if kind in _SCALARS:
            continue
        if kind is str:
            if "\x00" in item or not item.isascii():
                problem = text_problem(item)
                if problem is not None:
                    return (f"[{key!r}]", problem)
            continue
        found = value_problem(item, depth + 1)
        if found is not None:
            return (f"[{key!r}]{found[0]}", found[1])
    return None
