"""Helpers shared by the CLI commands: settings, Redis, JSON output."""

from __future__ import annotations

import json
from typing import Any

import click

from aicm_tasks.broker.topology import Topology, connect
from aicm_tasks.errors import SettingsError
from aicm_tasks.settings import Settings

#: Exit code of a command refused for a bad setting (click's code for usage errors).
EXIT_BAD_SETTING = 2


class BadSettingError(click.ClickException):
    """A bad ``AICM_*`` variable: its one line on stderr, exit code 2, no traceback."""

    exit_code = EXIT_BAD_SETTING


def load_settings() -> Settings:
    """Settings from the environment; a bad variable ends the command with one line."""
    try:
        return Settings.from_env()
    except SettingsError as exc:
        raise BadSettingError(str(exc)) from None


def topology_of(settings: Settings) -> Topology:
    """Every shard, with the operator commands' short timeouts. The commands
    read and change all shards as one pipeline."""
    return connect(settings, socket_connect_timeout=3, socket_timeout=10)


def echo_json(value: Any) -> None:
    """Print a value as indented JSON."""
    click.echo(json.dumps(value, indent=2, ensure_ascii=False, default=str))


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
