"""The README's "--json" sentence, as a check over the command tree: every command
takes ``--json`` but the two that cannot print one document."""

from __future__ import annotations

from pathlib import Path

import click

from aicm_tasks.cli import main

#: ``serve`` runs a server and ``monitor`` redraws a live view (``status --json``
#: prints its figures): neither has one document to print. README.md names them.
WITHOUT_JSON = {"serve", "monitor"}


def leaf_commands(group: click.Group, prefix: str = "") -> dict[str, click.Command]:
    found: dict[str, click.Command] = {}
    for name, command in group.commands.items():
        path = f"{prefix}{name}"
        if isinstance(command, click.Group):
            found |= leaf_commands(command, f"{path} ")
        else:
            found[path] = command
    return found


def test_every_command_but_serve_and_monitor_takes_json() -> None:
    commands = leaf_commands(main)
    assert set(commands) >= WITHOUT_JSON
    missing = sorted(
        path
        for path, command in commands.items()
        if path not in WITHOUT_JSON
        and not any("--json" in getattr(p, "opts", ()) for p in command.params)
    )
    assert missing == []


def test_the_readme_names_the_commands_without_json() -> None:
    readme = (Path(__file__).resolve().parents[3] / "README.md").read_text()
    assert "Every command but `serve` and `monitor` takes `--json`" in readme
