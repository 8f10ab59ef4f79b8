"""``aicm-tasks serve``: the local ``/track``-compatible server.

The key clients must send comes, first found wins, from ``--api-key-file``,
``--api-key``, ``AICM_SERVER_API_KEY``, ``AICM_API_KEY``; else one is
generated and printed. ``--api-key`` works but warns: a command line is
readable by every user of the machine (``ps``, ``/proc/<pid>/cmdline``).
"""

from __future__ import annotations

import secrets
from pathlib import Path

import click

from aicm_tasks.cli.common import load_settings
from aicm_tasks.errors import ConfigurationError
from aicm_tasks.redact import redact_url


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, type=int, help="Port to listen on.")
@click.option(
    "--db",
    "db",
    default=None,
    help="SQLite file, or a postgresql:// URL, for the ledger [default: AICM_SERVER_DB].",
)
@click.option(
    "--api-key-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="File holding the bearer key clients must send (surrounding whitespace ignored).",
)
@click.option(
    "--api-key",
    default=None,
    help="Bearer key clients must send; visible in the process list, prefer --api-key-file "
    "[default: AICM_SERVER_API_KEY, else AICM_API_KEY].",
)
@click.option(
    "--extra-service",
    multiple=True,
    help="A service key to accept besides the price catalog (repeatable).",
)
@click.option(
    "--monthly-budget",
    type=click.FloatRange(min=0),
    default=None,
    help="Monthly budget of all spend in USD [default: AICM_MONTHLY_BUDGET_USD].",
)
@click.option(
    "--customer-budget",
    multiple=True,
    metavar="CUSTOMER=USD",
    help="A customer's monthly budget (repeatable) [default: AICM_CUSTOMER_BUDGETS_USD].",
)
@click.option(
    "--keys-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Directory of the key pair signing triggered limits, created at first start "
    "[default: AICM_SERVER_KEYS_DIR, else beside an SQLite ledger, else the user's data "
    "directory].",
)
@click.option(
    "--log-level",
    "server_log_level",
    default="warning",
    show_default=True,
    help="Server log level.",
)
def serve(
    host: str,
    port: int,
    db: str | None,
    api_key_file: Path | None,
    api_key: str | None,
    extra_service: tuple[str, ...],
    monthly_budget: float | None,
    customer_budget: tuple[str, ...],
    keys_dir: Path | None,
    server_log_level: str,
) -> None:
    """Run a local server that speaks the /track contract (development, self-hosting)."""
    from aicm_tasks.server import run_server

    settings = load_settings()
    if api_key_file is not None:
        if api_key is not None:
            raise click.UsageError("give --api-key-file or --api-key, not both")
        api_key = api_key_file.read_text(encoding="utf-8").strip()
        if not api_key:
            raise click.BadParameter(f"{api_key_file} is empty", param_hint="--api-key-file")
    elif api_key is not None:
        click.echo(
            "warning: --api-key puts the key in the process list, where every user of this "
            "machine can read it; use --api-key-file PATH or AICM_SERVER_API_KEY instead",
            err=True,
        )
    if api_key is None:
        secret = settings.server_api_key or settings.api_key
        api_key = secret.get_secret_value() if secret is not None else None
    if not api_key:
        api_key = secrets.token_urlsafe(24)
        click.echo(
            f"No API key configured; clients must send: Authorization: Bearer {api_key}", err=True
        )
    budgets = dict(settings.customer_budgets_usd)
    budgets.update(_parse_budgets(customer_budget))
    database = db or settings.server_db
    click.echo(
        f"aicm-tasks local server on http://{host}:{port}/api/v1/track"
        f" (ledger in {redact_url(database)})",
        err=True,
    )
    try:
        run_server(
            host=host,
            port=port,
            api_key=api_key,
            db=database,
            extra_services=extra_service,
            log_level=server_log_level,
            monthly_budget_usd=monthly_budget
            if monthly_budget is not None
            else settings.monthly_budget_usd,
            customer_budgets_usd=budgets,
            keys_dir=keys_dir or settings.server_keys_dir,
        )
    except ConfigurationError as exc:
        # One line, not a traceback: a signing key other users can read, and the like.
        raise click.ClickException(str(exc)) from None


def _parse_budgets(pairs: tuple[str, ...]) -> dict[str, float]:
    """``("acme=250", ...)`` as ``{"acme": 250.0}``; a malformed pair is a usage error."""
    budgets: dict[str, float] = {}
    for pair in pairs:
        customer, sep, amount = pair.rpartition("=")
        try:
            value = float(amount)
        except ValueError:
            value = -1.0
        if not sep or not customer or value < 0:
            raise click.BadParameter(
                f"{pair!r} is not CUSTOMER=USD (e.g. acme=250)", param_hint="--customer-budget"
            )
        budgets[customer] = value
    return budgets
