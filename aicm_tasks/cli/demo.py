"""``aicm-tasks demo``: run the whole pipeline locally and report."""

from __future__ import annotations

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from aicm_tasks.cli.common import echo_json, json_option, load_settings
from aicm_tasks.devtools.demo import Demo
from aicm_tasks.devtools.demo import Progress as DemoProgress
from aicm_tasks.errors import LocalRedisError


@click.command()
@click.option(
    "--records",
    default=5000,
    show_default=True,
    type=click.IntRange(1, 1_000_000),
    help="How many records to publish.",
)
@click.option(
    "--timeout",
    "timeout_s",
    default=300.0,
    show_default=True,
    help="Give up after this many seconds.",
)
@json_option
def demo(records: int, timeout_s: float, as_json: bool) -> None:
    """Start the local server and a worker, publish records, report the outcome."""
    console = Console(stderr=as_json)
    settings = load_settings()
    try:
        with (
            Demo(settings, records=records) as run,
            Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=console,
                transient=as_json,
            ) as bar,
        ):
            if run.private_redis:
                console.print(
                    f"No Redis answered at the broker URL; started a private one at {run.broker_url}"
                )
            published = bar.add_task("published", total=records)
            settled = bar.add_task("settled", total=records)

            def show(progress: DemoProgress) -> None:
                bar.update(published, completed=progress.published)
                bar.update(settled, completed=progress.delivered + progress.dead_lettered)

            summary = run.run(show, timeout_s=timeout_s)
    except LocalRedisError as exc:
        raise click.ClickException(str(exc)) from exc
    except TimeoutError as exc:
        raise click.ClickException(str(exc)) from exc
    figures = {
        "published": summary.published,
        "delivered": summary.delivered,
        "dead_lettered": summary.dead_lettered,
        "unique_response_ids_at_server": summary.unique_at_server,
        "duplicates_at_server": summary.duplicates_at_server,
        "seconds": round(summary.seconds, 3),
        "publish_seconds": round(summary.publish_seconds, 3),
        "records_per_s": round(summary.records_per_s, 1),
        "broker": summary.broker,
        "private_redis": summary.private_redis,
    }
    if as_json:
        echo_json(figures)
        return
    table = Table(title="aicm-tasks demo")
    table.add_column("what")
    table.add_column("records", justify="right")
    table.add_row("published", str(summary.published))
    table.add_row("delivered", str(summary.delivered))
    for reason, count in sorted(summary.dead_lettered.items()):
        table.add_row(f"dead-lettered: {reason}", str(count))
    table.add_row("unique response_ids at the server", str(summary.unique_at_server))
    table.add_row("duplicates at the server", str(summary.duplicates_at_server))
    console.print(table)
    console.print(
        f"{summary.records_per_s:,.0f} records/s from first publish to last settled "
        f"({summary.seconds:.2f} s; publishing took {summary.publish_seconds:.2f} s, "
        f"{summary.publish_seconds / summary.published * 1e6:,.0f} µs per track.delay)"
    )
