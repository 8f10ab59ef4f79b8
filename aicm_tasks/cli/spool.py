"""``aicm-tasks spool``: records kept locally while the broker did not answer."""

from __future__ import annotations

import dataclasses

import click

from aicm_tasks.broker.errors import BROKER_ERRORS
from aicm_tasks.broker.rabbitmq.publisher import RabbitTarget
from aicm_tasks.cli.common import echo_json, json_option, load_settings, topology_of
from aicm_tasks.errors import RecordsRefusedError
from aicm_tasks.producer.publisher import DRAIN_TIMEOUT_S, RecordTarget
from aicm_tasks.producer.shards import ShardedTarget
from aicm_tasks.producer.spool import Spool


@click.group()
def spool() -> None:
    """The local spool of records that could not be published."""


@spool.command()
@json_option
def status(as_json: bool) -> None:
    """How many records are spooled for the configured queue, and for others."""
    settings = load_settings()
    figures = dataclasses.asdict(Spool.for_settings(settings).status())
    if as_json:
        echo_json(figures)
        return
    click.echo(
        f"{figures['records']} records for queue {settings.queue} in {figures['directory']} "
        f"({figures['files']} files, {figures['bytes']} bytes)"
    )
    if figures["other_records"]:
        click.echo(
            f"{figures['other_records']} records for other queues or key prefixes "
            "(set AICM_QUEUE and AICM_KEY_PREFIX to theirs to drain them)"
        )
    if figures["skipped"]:
        click.echo(f"{figures['skipped']} files skipped: another user's, or unreadable")


@spool.command()
@json_option
def drain(as_json: bool) -> None:
    """Push every record spooled for the configured queue to the broker now."""
    settings = load_settings()
    try:
        # To RabbitMQ, or to whichever Redis shards answer, in turn, as the producer would.
        target: RecordTarget = (
            RabbitTarget.for_settings(settings, timeout_s=DRAIN_TIMEOUT_S)
            if settings.records_on_rabbitmq
            else ShardedTarget(topology_of(settings).stores)
        )
        pushed = Spool.for_settings(settings).drain(target)
    except RecordsRefusedError as exc:
        raise click.ClickException(
            f"the broker refused {len(exc.refused)} records, which stay spooled (the others "
            f"were pushed): {exc}"
        ) from exc
    except BROKER_ERRORS as exc:
        raise click.ClickException(
            f"the broker did not answer; records stay spooled: {exc}"
        ) from exc
    if as_json:
        echo_json({"pushed": pushed})
        return
    click.echo(f"pushed {pushed} spooled records to the broker")
