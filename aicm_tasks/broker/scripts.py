"""Every Lua script the broker runs, read from ``broker/lua/*.lua`` (package data).

Each move between keys that must be atomic is one script (why each must be:
``records.py``). Scripts share two snippets, ``_now.lua`` (the Redis server's
clock) and ``_return_batch.lua``; a line ``--#include _now`` in a script is
replaced by the snippet's text. Kept as ``.lua`` files so that they read (and
lint, and diff) as Lua; composed here in a few lines rather than with a
template engine, which would be one more dependency for two substitutions.
"""

from __future__ import annotations

import re
from functools import cache
from importlib.resources import files

#: A line that pulls in a snippet: ``--#include <name>`` (name without ``.lua``).
_INCLUDE = re.compile(r"^--#include (\w+)\n", re.MULTILINE)

#: Every script, by file name (without ``.lua``); the snippets start with ``_``.
SCRIPTS = (
    "fetch",
    "resolve",
    "release",
    "expired",
    "reclaim",
    "sweep",
    "renew",
    "drop_lease",
    "promote",
    "forget_unseen",
    "note_idle",
    "replay",
    "purge",
    "write_limits",
)


def _read(name: str) -> str:
    return (files("aicm_tasks.broker") / "lua" / f"{name}.lua").read_text(encoding="utf-8")


@cache
def source(name: str) -> str:
    """The Lua source of script ``name``, its ``--#include`` lines replaced by the
    snippets. Raises ``FileNotFoundError`` for a name with no ``.lua`` file."""
    return _INCLUDE.sub(lambda match: _read(match.group(1)), _read(name))
