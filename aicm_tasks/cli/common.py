"""Helpers shared by the CLI commands: settings, Redis, JSON output."""

from __future__ import annotations

import json
from typing import Any

import click
import redis

from aicm_tasks.broker.keys import Keys
from aicm_tasks.broker.topology import Topology, connect
from aicm_tasks.settings import Settings


def load_settings() -> Settings:
    """Settings from the environment, with a clean CLI error when invalid."""
    try:
        return Settings.from_env()
    except Exception as exc:  # pydantic.ValidationError names the variable
        raise click.ClickException(f"invalid AICM_* setting: {exc}") from exc


def redis_client(settings: Settings) -> redis.Redis:
    """A Redis client for operator commands (short timeouts: a human is waiting)."""
    return redis.Redis.from_url(settings.broker_url, socket_connect_timeout=3, socket_timeout=10)


def topology_of(settings: Settings) -> Topology:
    """Every shard, with the operator commands' short timeouts. The commands
    read and change all shards as one pipeline."""
    return connect(settings, socket_connect_timeout=3, socket_timeout=10)


def keys_of(settings: Settings) -> Keys:
    return Keys(settings.queue, settings.key_prefix)


def echo_json(value: Any) -> None:
    """Print a value as indented JSON."""
    click.echo(json.dumps(value, indent=2, ensure_ascii=False, default=str))


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
