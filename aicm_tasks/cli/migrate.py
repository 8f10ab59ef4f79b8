"""``aicm-tasks import-sqlite``: move the official SDK's SQLite queue onto the broker."""

from __future__ import annotations

from pathlib import Path

import click

from aicm_tasks.broker.errors import BROKER_ERRORS
from aicm_tasks.broker.rabbitmq.publisher import RabbitTarget
from aicm_tasks.broker.topology import record_urls
from aicm_tasks.cli.common import echo_json, json_option, load_settings, topology_of
from aicm_tasks.errors import ConfigurationError, RecordsRefusedError
from aicm_tasks.producer.sqlite_import import (
    DEFAULT_CHUNK,
    SDK_STATUSES,
    ImportSink,
    RabbitImportSink,
    RedisImportSink,
    import_records,
)
from aicm_tasks.redact import redact_url

#: The budget of one chunk's confirm wait on RabbitMQ (up to 10,000 records).
IMPORT_TIMEOUT_S = 30.0


@click.command("import-sqlite")
@click.argument("path", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--dry-run", is_flag=True, help="Show what would be published; change nothing.")
@click.option(
    "--chunk",
    default=DEFAULT_CHUNK,
    show_default=True,
    type=click.IntRange(1, 10_000),
    help="Records per broker round trip.",
)
@json_option
def import_sqlite(path: Path, dry_run: bool, chunk: int, as_json: bool) -> None:
    """Publish the records of the SDK's PersistentDelivery queue file (queue.db /
    delivery_queue.db): queued, processing and failed ones, with their original
    response_ids. Published rows move to the table aicm_tasks_imported of the same
    file; running it again publishes nothing twice. Stop the apps that use the
    file first."""
    settings = load_settings()
    try:
        sink: ImportSink
        if settings.records_on_rabbitmq:
            # Confirmed publishes; the file's own table remembers what was imported.
            sink = RabbitImportSink(RabbitTarget.for_settings(settings, timeout_s=IMPORT_TIMEOUT_S))
        else:
            # The first shard: the import remembers what it published (the
            # ``imported`` set) in the same transaction as the push, so both must
            # live in one slot; workers consume every shard alike.
            store = topology_of(settings).stores[0]
            sink = RedisImportSink(store.client, store.keys)
        report = import_records(
            path,
            sink,
            dry_run=dry_run,
            max_record_bytes=settings.max_record_bytes,
            chunk=chunk,
        )
    except ConfigurationError as exc:
        raise click.ClickException(str(exc)) from exc
    except RecordsRefusedError as exc:
        raise click.ClickException(
            f"the broker refused {len(exc.refused)} records ({exc}); the rows it took moved "
            "to aicm_tasks_imported, the refused ones stay in the file: run the command again"
        ) from exc
    except BROKER_ERRORS as exc:
        raise click.ClickException(
            f"the broker at {', '.join(redact_url(u) for u in record_urls(settings))} "
            f"did not answer ({exc}); "
            "rows not yet published stay in the file: run the command again"
        ) from exc
    if as_json:
        echo_json(report.as_dict())
        return
    total = sum(report.found.values())
    by_status = ", ".join(f"{report.found[s]} {s}" for s in SDK_STATUSES)
    click.echo(f"{path}: {total} records to move ({by_status})")
    verb = "would publish" if dry_run else "published"
    click.echo(
        f"{verb} {report.published}, already published {report.already_published}, "
        f"invalid {len(report.invalid)}"
    )
    for row_id, reason in report.invalid[:20]:
        click.echo(f"  row {row_id} left in the file: {reason}")
    if len(report.invalid) > 20:
        click.echo(f"  ... and {len(report.invalid) - 20} more (--json lists them all)")
    if dry_run:
        click.echo("dry run: nothing was published and the file was not changed")
