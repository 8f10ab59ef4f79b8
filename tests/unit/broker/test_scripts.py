"""The Lua scripts, read from broker/lua/*.lua and composed with their snippets."""

from __future__ import annotations

import re
from importlib.resources import files

import pytest
import redis

from aicm_tasks.broker import scripts

LUA_DIR = files("aicm_tasks.broker") / "lua"


def test_every_lua_file_is_a_script_or_an_included_snippet() -> None:
    on_disk = {p.name.removesuffix(".lua") for p in LUA_DIR.iterdir() if p.name.endswith(".lua")}
    snippets = {name for name in on_disk if name.startswith("_")}
    assert on_disk - snippets == set(scripts.SCRIPTS)
    included = {
        line.removeprefix("--#include ").strip()
        for name in scripts.SCRIPTS
        for line in (LUA_DIR / f"{name}.lua").read_text().splitlines()
        if line.startswith("--#include ")
    }
    assert included == snippets


@pytest.mark.parametrize("name", scripts.SCRIPTS)
def test_each_script_is_composed_without_include_lines_and_compiles(
    name: str, real_redis: redis.Redis
) -> None:
    source = scripts.source(name)
    assert "--#include" not in source
    # SCRIPT LOAD compiles the script: a Lua syntax error (a snippet spliced in
    # the wrong place, a missing `end`) is refused here rather than at delivery.
    sha = real_redis.script_load(source)
    assert real_redis.script_exists(sha) == [True]


def test_every_script_that_uses_the_clock_reads_the_servers() -> None:
    # A script that used `now` without the snippet would read an unset global
    # (nil) and fail at run time, or, worse, take a host's time as an ARGV.
    for name in scripts.SCRIPTS:
        raw = (LUA_DIR / f"{name}.lua").read_text()
        code = "\n".join(line.split("--")[0] for line in raw.splitlines())
        if re.search(r"\bnow\b", code):
            assert "--#include _now" in raw, name


def test_an_unknown_script_name_is_refused() -> None:
    with pytest.raises(FileNotFoundError):
        scripts.source("no_such_script")
