"""``aicm-tasks spool``: records kept locally while the broker did not answer."""

from __future__ import annotations

import dataclasses

import click
import redis

from aicm_tasks.broker import RecordStore
from aicm_tasks.cli.common import echo_json, json_option, keys_of, load_settings, redis_client
from aicm_tasks.spool import Spool


@click.group()
def spool() -> None:
    """The local spool of records that could not be published."""


@spool.command()
@json_option
def status(as_json: bool) -> None:
    """How many records are spooled, in how many files."""
    settings = load_settings()
    figures = dataclasses.asdict(Spool(settings.spool_dir, settings.spool_max_bytes).status())
    if as_json:
        echo_json(figures)
        return
    click.echo(
        f"{figures['records']} records in {figures['files']} files ({figures['bytes']} bytes) in {figures['directory']}"
    )


@spool.command()
@json_option
def drain(as_json: bool) -> None:
    """Push every spooled record to the broker now."""
    settings = load_settings()
    store = RecordStore(redis_client(settings), keys_of(settings))
    try:
        pushed = Spool(settings.spool_dir, settings.spool_max_bytes).drain(
            store.push_many, only_own_and_dead=False
        )
    except redis.RedisError as exc:
        raise click.ClickException(
            f"the broker did not answer; records stay spooled: {exc}"
        ) from exc
    if as_json:
        echo_json({"pushed": pushed})
        return
    click.echo(f"pushed {pushed} spooled records to the broker")
