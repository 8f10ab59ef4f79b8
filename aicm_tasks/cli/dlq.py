"""``aicm-tasks dlq``: list, inspect, replay, purge and export dead letters."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from aicm_tasks.broker.dead_letters import DeadLetterStore, Selection, selection_of
from aicm_tasks.broker.errors import SHARD_ERRORS
from aicm_tasks.broker.rabbitmq.connection import RABBIT_ERRORS
from aicm_tasks.broker.rabbitmq.dead_letters import RabbitDeadLetterStore
from aicm_tasks.broker.rabbitmq.names import RabbitNames
from aicm_tasks.cli.common import echo_json, json_option, load_settings, topology_of
from aicm_tasks.errors import DeadLetterNotFoundError, ShardsDownError
from aicm_tasks.worker.outcomes import Reason

REASONS = [reason.value for reason in Reason]
#: Characters of the first error ``dlq list`` shows in a terminal (all with --wide).
ERROR_SHOWN = 80
#: Console width of ``dlq list --wide``: wider than any row, so rich never cuts one.
WIDE_COLUMNS = 100_000


#: What either broker raises when it did not answer.
BROKER_ERRORS: tuple[type[BaseException], ...] = (*SHARD_ERRORS, *RABBIT_ERRORS)
#: Either broker's store: the same verbs, the same meaning.
Store = DeadLetterStore | RabbitDeadLetterStore


def _store() -> Store:
    settings = load_settings()
    if settings.records_on_rabbitmq:
        return RabbitDeadLetterStore(
            settings.broker_url, RabbitNames(settings.queue, settings.key_prefix)
        )
    # Every shard's dead letters, as one store (an id is found wherever it is).
    # A cluster client connects here, to learn the slot map.
    stores = _guard(lambda: topology_of(settings).stores)
    return DeadLetterStore.over(stores)


def _warn_down(store: Store) -> None:
    """Name each shard that did not answer, on stderr: what was shown, replayed
    or purged left its dead letters out."""
    for shard, why in getattr(store, "down", {}).items():
        click.echo(
            f"warning: shard {shard} did not answer ({why}): its dead letters are left out",
            err=True,
        )


def _done(store: Store) -> None:
    """Exit code 1 when a shard did not answer (after the output of the others)."""
    if getattr(store, "down", None):
        _warn_down(store)
        raise SystemExit(1)


def _selection_options(func: Callable[..., Any]) -> Callable[..., Any]:
    func = click.argument("ids", nargs=-1)(func)
    func = click.option("--reason", type=click.Choice(REASONS), help="Only this reason.")(func)
    func = click.option("--service-key", help="Only records of this service key.")(func)
    func = click.option("--all", "select_all", is_flag=True, help="Every dead letter.")(func)
    return func


def _selection(
    ids: tuple[str, ...], reason: str | None, service_key: str | None, select_all: bool
) -> Selection:
    selection = selection_of(ids, reason, service_key, select_all)
    if selection.is_empty:
        raise click.UsageError("select dead letters: give ids, --reason, --service-key or --all")
    return selection


def _when(epoch_s: Any) -> str:
    if epoch_s is None:
        return "-"
    return datetime.fromtimestamp(float(epoch_s), timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


@click.group()
def dlq() -> None:
    """Dead letters: records the server refused or that ran out of retries."""


@dlq.command()
@json_option
def stats(as_json: bool) -> None:
    """Totals by reason and by service key."""
    store = _store()
    figures = _guard(store.stats)
    if as_json:
        echo_json(figures)
        _done(store)
        return
    console = Console()
    console.print(f"dead letters: [bold]{figures['total']}[/bold]")
    for title, column in (("reason", "by_reason"), ("service key", "by_service_key")):
        if figures[column]:
            table = Table(title=f"by {title}")
            table.add_column(title)
            table.add_column("records", justify="right")
            for name, count in figures[column].items():
                table.add_row(name, str(count))
            console.print(table)
    _done(store)


@dlq.command(name="list")
@_selection_options
@click.option("--limit", type=int, default=50, show_default=True, help="At most this many.")
@click.option(
    "--wide",
    is_flag=True,
    help="Never cut ids or errors (the default when the output is not a terminal).",
)
@json_option
def list_(
    ids: tuple[str, ...],
    reason: str | None,
    service_key: str | None,
    select_all: bool,
    limit: int,
    wide: bool,
    as_json: bool,
) -> None:
    """List dead letters (oldest first). With no selection, lists all."""
    selection = selection_of(ids, reason, service_key, select_all)
    if selection.is_empty:
        selection = Selection(all=True)
    store = _store()
    entries = _guard(lambda: store.list(selection, limit=limit))
    if as_json:
        echo_json(entries)
        _done(store)
        return
    # Piped or redirected output is for copying ids into `show`/`replay` or a
    # script: a cut id ("5b0e…") is useless there.
    wide = wide or not to_terminal()
    table = Table(title=f"{len(entries)} dead letters")
    table.add_column("id", no_wrap=wide, overflow="fold" if wide else "ellipsis")
    for column in ("reason", "service key", "attempts", "last failure", "error"):
        table.add_column(column, no_wrap=wide)
    for entry in entries:
        errors = entry.get("errors") or [entry.get("detail") or ""]
        error = str(errors[0])
        table.add_row(
            entry["id"],
            entry["reason"],
            str(entry.get("service_key")),
            str(entry.get("attempts")),
            _when(entry.get("last_failure_at")),
            error if wide else error[:ERROR_SHOWN],
        )
    # Wide: as wide as the rows need (a console of the terminal's width would
    # squeeze the id column and cut it again).
    Console(width=WIDE_COLUMNS if wide else None).print(table)
    _done(store)


@dlq.command()
@click.argument("dead_letter_id")
@json_option
def show(dead_letter_id: str, as_json: bool) -> None:
    """Show one dead letter in full: the record, the reason, the server's errors.

    DEAD_LETTER_ID is its response_id, or the start of it when only one begins so.
    """
    store = _store()
    entry = _guard(lambda: store.get(_resolve(store, dead_letter_id)))
    if as_json:
        echo_json(entry)
        return
    console = Console()
    for name in ("id", "reason", "detail", "errors", "http_status", "attempts", "service_key"):
        console.print(f"[bold]{name}[/bold]: {entry.get(name)}")
    console.print(f"[bold]first failure[/bold]: {_when(entry.get('first_failure_at'))}")
    console.print(f"[bold]last failure[/bold]: {_when(entry.get('last_failure_at'))}")
    console.print_json(data=entry.get("record"))


@dlq.command()
@_selection_options
@click.option("--dry-run", is_flag=True, help="Show what would be replayed; change nothing.")
@json_option
def replay(
    ids: tuple[str, ...],
    reason: str | None,
    service_key: str | None,
    select_all: bool,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Publish the selected records again, unchanged (same response_id).

    IDS are response_ids, or the start of each when only one begins so.
    """
    selection = _selection(ids, reason, service_key, select_all)
    store = _store()
    if selection.ids:
        full = tuple(_guard(lambda: [_resolve(store, given) for given in selection.ids]))
        selection = dataclasses.replace(selection, ids=full)
    replayed = _guard(lambda: store.replay(selection, dry_run=dry_run))
    if as_json:
        echo_json({"dry_run": dry_run, "replayed": len(replayed), "ids": replayed})
        _done(store)
        return
    verb = "would replay" if dry_run else "replayed"
    click.echo(f"{verb} {len(replayed)} dead letters")
    _done(store)


@dlq.command()
@_selection_options
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@json_option
def purge(
    ids: tuple[str, ...],
    reason: str | None,
    service_key: str | None,
    select_all: bool,
    yes: bool,
    as_json: bool,
) -> None:
    """Delete the selected dead letters for good."""
    selection = _selection(ids, reason, service_key, select_all)
    store = _store()
    count = len(_guard(lambda: store.list(selection)))
    if count and not yes:
        _warn_down(store)  # before the question: the count leaves those shards out
        click.confirm(f"Delete {count} dead letters for good?", abort=True)
    removed = _guard(lambda: store.purge(selection)) if count else 0
    if as_json:
        echo_json({"purged": removed})
    else:
        click.echo(f"purged {removed} dead letters")
    _done(store)


@dlq.command()
@_selection_options
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, writable=True),
    help="Write to this file instead of standard output.",
)
@json_option
def export(
    ids: tuple[str, ...],
    reason: str | None,
    service_key: str | None,
    select_all: bool,
    output: str | None,
    as_json: bool,
) -> None:
    """Write dead letters as JSON Lines (all of them unless selected)."""
    selection = selection_of(ids, reason, service_key, select_all)
    if selection.is_empty:
        selection = Selection(all=True)
    store = _store()
    if output is None:
        written = _guard(lambda: store.export(selection, sys.stdout))
        _done(store)
        return
    with open(output, "w", encoding="utf-8") as out:
        written = _guard(lambda: store.export(selection, out))
    if as_json:
        echo_json({"exported": written, "output": output})
    else:
        click.echo(f"exported {written} dead letters to {output}", err=True)
    _done(store)


def to_terminal() -> bool:
    """Whether standard output is a terminal (a person reading, not a pipe or file)."""
    return sys.stdout.isatty()


def _resolve(store: Store, id_or_prefix: str) -> str:
    try:
        return store.resolve(id_or_prefix)
    except DeadLetterNotFoundError as exc:  # ambiguous too: its message lists candidates
        raise click.ClickException(str(exc)) from None


def _guard(action: Callable[[], Any]) -> Any:
    try:
        return action()
    except ShardsDownError as exc:
        raise click.ClickException(str(exc)) from None
    except BROKER_ERRORS as exc:
        raise click.ClickException(f"the broker did not answer: {exc}") from None
