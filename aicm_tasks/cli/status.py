"""``aicm-tasks status`` and ``aicm-tasks monitor``: is usage flowing?"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import click
from rich.console import Group
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from aicm_tasks.broker.errors import SHARD_ERRORS
from aicm_tasks.broker.figures import Figures, Thresholds
from aicm_tasks.broker.health import ALIVE_WITHIN_S, DEFAULT_MAX_OLDEST_QUEUED_S
from aicm_tasks.broker.rabbitmq.connection import RABBIT_ERRORS
from aicm_tasks.broker.rabbitmq.figures import RabbitFiguresReader
from aicm_tasks.broker.rabbitmq.names import RabbitNames
from aicm_tasks.broker.records import RecordStore
from aicm_tasks.broker.shard_figures import read_all_figures
from aicm_tasks.cli.common import echo_json, json_option, load_settings, topology_of
from aicm_tasks.errors import ShardsDownError
from aicm_tasks.settings import Settings

#: What either broker raises when it did not answer (ShardsDownError: no shard did).
BROKER_ERRORS: tuple[type[BaseException], ...] = (*SHARD_ERRORS, *RABBIT_ERRORS, ShardsDownError)
#: Exit code of ``status`` (and ``monitor --once``) when no broker answered.
EXIT_NO_ANSWER = 2


def _stores(settings: Settings) -> list[RecordStore]:
    """Every shard's store: status and monitor sum them into one pipeline."""
    return topology_of(settings).stores


def _reader(settings: Settings, thresholds: Thresholds) -> Callable[[], Figures]:
    """What reads the figures: every shard's Redis, or RabbitMQ (its consumers kept
    between readings, so that monitor's frames do not re-read the streams).

    It connects on its first call and again after a call that failed to, so a
    broker that is down when ``monitor`` starts is shown as such, then read
    once it is back (a Redis Cluster client connects to learn its slot map)."""
    connected: list[Callable[[], Figures]] = []

    def read() -> Figures:
        if not connected:
            connected.append(_connect(settings, thresholds))
        return connected[0]()

    return read


def _connect(settings: Settings, thresholds: Thresholds) -> Callable[[], Figures]:
    if settings.records_on_rabbitmq:
        names = RabbitNames(settings.queue, settings.key_prefix)
        rabbit = RabbitFiguresReader(settings.broker_url, names, window_s=thresholds.window_s)
        return lambda: rabbit.read(thresholds)
    stores = _stores(settings)
    return lambda: read_all_figures(stores, thresholds)


def _thresholds_options(func: Callable[..., Any]) -> Callable[..., Any]:
    func = click.option(
        "--window",
        "window_s",
        type=click.FloatRange(1, 3600),
        default=None,
        help="Unhealthy when records wait undelivered, /track refuses the key, or transport "
        "errors dominate for this long (seconds; default AICM_HEALTH_WINDOW_S, 120).",
    )(func)
    func = click.option(
        "--max-dead-letters", type=int, default=None, help="Unhealthy above this many dead letters."
    )(func)
    func = click.option(
        "--max-oldest-queued",
        "max_oldest_s",
        type=float,
        default=DEFAULT_MAX_OLDEST_QUEUED_S,
        show_default=True,
        help="Unhealthy when the oldest queued record was enqueued longer ago (seconds).",
    )(func)
    func = click.option(
        "--no-worker-for",
        "no_worker_s",
        type=float,
        default=ALIVE_WITHIN_S,
        show_default=True,
        help="Unhealthy when no worker renewed its lease for this long (seconds).",
    )(func)
    return func


def _thresholds(
    settings: Settings,
    no_worker_s: float,
    max_oldest_s: float,
    max_dead_letters: int | None,
    window_s: float | None,
) -> Thresholds:
    window = settings.health_window_s if window_s is None else window_s
    return Thresholds(no_worker_s, max_oldest_s, max_dead_letters, window)


@click.command()
@_thresholds_options
@json_option
def status(
    max_dead_letters: int | None,
    max_oldest_s: float,
    no_worker_s: float,
    window_s: float | None,
    as_json: bool,
) -> None:
    """The pipeline's figures once; exit code 1 with the reasons when unhealthy."""
    settings = load_settings()
    thresholds = _thresholds(settings, no_worker_s, max_oldest_s, max_dead_letters, window_s)
    try:
        figures = _reader(settings, thresholds)()
    except BROKER_ERRORS as exc:
        if as_json:
            echo_json({"healthy": False, "problems": [_no_answer(exc)]})
        else:
            click.echo(f"unhealthy: {_no_answer(exc)}", err=True)
        raise SystemExit(EXIT_NO_ANSWER) from None
    if as_json:
        echo_json(figures.as_dict())
    else:
        from rich.console import Console

        Console().print(render(figures))
    if not figures.healthy:
        raise SystemExit(1)


@click.command()
@click.option(
    "--interval", type=float, default=1.0, show_default=True, help="Seconds between refreshes."
)
@click.option("--once", is_flag=True, help="Draw one frame and exit (for scripts and tests).")
@_thresholds_options
def monitor(
    interval: float,
    once: bool,
    max_dead_letters: int | None,
    max_oldest_s: float,
    no_worker_s: float,
    window_s: float | None,
) -> None:
    """A live view of the pipeline; Ctrl-C quits. A broker that does not answer
    is shown as such and read again at the next refresh (``--once``: exit code 2)."""
    settings = load_settings()
    thresholds = _thresholds(settings, no_worker_s, max_oldest_s, max_dead_letters, window_s)
    read = _reader(settings, thresholds)
    answered: list[bool] = []

    def frame() -> Group | Table:
        try:
            figures = read()
        except BROKER_ERRORS as exc:
            answered.append(False)
            return render_no_answer(exc)
        answered.append(True)
        return render(figures)

    try:
        with Live(frame(), refresh_per_second=4, screen=False) as live:
            while not once:
                time.sleep(interval)
                live.update(frame())
    except KeyboardInterrupt:
        pass
    if once and not answered[-1]:
        raise SystemExit(EXIT_NO_ANSWER)


def _no_answer(exc: BaseException) -> str:
    return f"the broker did not answer: {str(exc) or type(exc).__name__}"


def render_no_answer(exc: BaseException) -> Table:
    """The monitor's frame while no broker answers: the error, no figures."""
    table = Table(title="aicm-tasks  [red]unhealthy[/red]", show_header=False)
    table.add_column("figure")
    table.add_column("value")
    table.add_row("[red]broker[/red]", f"[red]{escape(_no_answer(exc))}[/red]")
    return table


def _ago(seconds: float | None) -> str:
    return "never" if seconds is None else f"{seconds:,.0f}s ago"


def render(figures: Figures) -> Group:
    """The monitor's frame: figures, workers, dead letters by reason, last errors."""
    state = (
        "[green]healthy[/green]"
        if figures.healthy
        else "[red]unhealthy: " + escape("; ".join(figures.problems)) + "[/red]"
    )
    main = Table(title=f"aicm-tasks  {state}", show_header=False)
    main.add_column("figure")
    main.add_column("value", justify="right")
    main.add_row("queued (waiting for a worker)", f"{figures.queued:,}")
    main.add_row("held by workers", f"{figures.held:,}")
    main.add_row("waiting for a retry", f"{figures.scheduled:,}")
    main.add_row(
        "delivered, last 5 s",
        f"{figures.delivered_last_5s:,} ({figures.delivered_per_s_last_5s:,.1f}/s)",
    )
    main.add_row(
        "delivered, last minute",
        f"{figures.delivered_last_minute:,} ({figures.delivered_per_s:,.1f}/s)",
    )
    main.add_row("last delivery", _ago(figures.last_delivered_s_ago))
    recent = figures.recent
    main.add_row(
        f"requests to /track, last {figures.window_s:,.0f}s",
        f"{recent.get('requests', 0):,} ({recent.get('transport_failed', 0):,} failed in "
        f"transport, {recent.get('unauthorized', 0):,} refused the key)",
    )
    main.add_row(
        "oldest queued record (since enqueued)",
        "-" if figures.oldest_queued_s is None else f"{figures.oldest_queued_s:,.0f}s",
    )
    alive = [w for w in figures.workers if w["alive"]]
    main.add_row("workers alive", f"{len(alive)}" if alive else "none")
    for worker in alive:
        main.add_row(f"  {escape(worker['name'])}", escape(worker["consumer"]))
    main.add_row("dead letters", f"{figures.dead_letters:,}")
    for shard, why in figures.shards_down.items():
        main.add_row(
            f"[red]shard {escape(shard)}[/red]", f"[red]did not answer: {escape(why)}[/red]"
        )
    if figures.rabbitmq:
        _rabbitmq_rows(main, figures)
    else:
        _redis_rows(main, figures)
    for warning in figures.warnings:
        main.add_row("[yellow]warning[/yellow]", f"[yellow]{escape(warning)}[/yellow]")
    # Redis counts what was dead-lettered since the start; RabbitMQ, what is stored.
    by_reason = "stored" if figures.rabbitmq else "dead-lettered since start"
    for reason, count in sorted(figures.dead_letters_by_reason.items()):
        main.add_row(f"  {by_reason}: {reason}", f"{count:,}")
    errors = Table(title="last delivery errors")
    errors.add_column("when")
    errors.add_column("what")
    for error in figures.last_errors:
        when = datetime.fromtimestamp(error["at"], timezone.utc).strftime("%H:%M:%S")
        errors.add_row(when, escape(str(error.get("detail"))[:100]))
    return Group(main, errors) if figures.last_errors else Group(main)


def _redis_rows(main: Table, figures: Figures) -> None:
    broker = figures.redis_settings
    read = broker.get("source", "unknown")
    if broker.get("read_by") and broker.get("read_by") != "status":
        read += f", by worker {broker['read_by']}"
    main.add_row(
        "Redis maxmemory-policy", f"{broker.get('maxmemory_policy') or 'unknown'} ({read})"
    )
    aof = {"1": "on", "0": "off"}.get(broker.get("aof_enabled", ""), "unknown")
    main.add_row("Redis AOF", aof)


def _rabbitmq_rows(main: Table, figures: Figures) -> None:
    queue = figures.rabbitmq
    state = (
        "not declared yet"
        if not queue.get("declared")
        else "quorum, as aicm-tasks declares it"
        if queue.get("as_declared_by_aicm_tasks")
        else "[red]declared otherwise: records at risk[/red]"
    )
    main.add_row(f"RabbitMQ queue {escape(str(queue.get('record_queue')))}", state)
    main.add_row("parked (past the delivery limit)", f"{figures.parked:,}")
