"""``aicm-tasks serve``: the local ``/track``-compatible server."""

from __future__ import annotations

import secrets

import click

from aicm_tasks.cli.common import load_settings


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, type=int, help="Port to listen on.")
@click.option(
    "--db", "db_path", default=None, help="SQLite file for events [default: AICM_SERVER_DB]."
)
@click.option(
    "--api-key",
    default=None,
    help="Bearer key clients must send [default: AICM_SERVER_API_KEY, else AICM_API_KEY].",
)
@click.option(
    "--extra-service",
    multiple=True,
    help="A service key to accept besides the price catalog (repeatable).",
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
    db_path: str | None,
    api_key: str | None,
    extra_service: tuple[str, ...],
    server_log_level: str,
) -> None:
    """Run a local server that speaks the /track contract (development, self-hosting)."""
    from aicm_tasks.server import run_server

    settings = load_settings()
    if api_key is None:
        secret = settings.server_api_key or settings.api_key
        api_key = secret.get_secret_value() if secret is not None else None
    if not api_key:
        api_key = secrets.token_urlsafe(24)
        click.echo(
            f"No API key configured; clients must send: Authorization: Bearer {api_key}", err=True
        )
    db = db_path or settings.server_db
    click.echo(
        f"aicm-tasks local server on http://{host}:{port}/api/v1/track (events in {db})", err=True
    )
    run_server(
        host=host,
        port=port,
        api_key=api_key,
        db_path=db,
        extra_services=extra_service,
        log_level=server_log_level,
    )
