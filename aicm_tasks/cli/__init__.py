"""``aicm-tasks``: the command line. The only part of the package that prints."""

from __future__ import annotations

import logging

import click

from aicm_tasks.cli.costs import budget, costs
from aicm_tasks.cli.demo import demo
from aicm_tasks.cli.dlq import dlq
from aicm_tasks.cli.migrate import import_sqlite
from aicm_tasks.cli.serve import serve
from aicm_tasks.cli.spool import spool
from aicm_tasks.cli.status import monitor, status


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--log-level",
    default="WARNING",
    show_default=True,
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"], case_sensitive=False),
    help="Logging level for aicm-tasks.",
)
@click.version_option(package_name="aicm-tasks")
def main(log_level: str) -> None:
    """aicm-tasks: LLM-usage tracking on Celery, off the request path."""
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


main.add_command(dlq)
main.add_command(serve)
main.add_command(demo)
main.add_command(spool)
main.add_command(status)
main.add_command(monitor)
main.add_command(import_sqlite)
main.add_command(costs)
main.add_command(budget)

__all__ = ["main"]
