"""The local development server that speaks the ``POST /track`` contract.

It stands in for the AICostManager API on a laptop, in tests or for a team
that self-hosts: same routes, same authentication, same per-record answers
(``completed`` with ``cost_events``, ``queued``, ``service_key_unknown``,
``error``), with service keys recognised and costed from the ``genai-prices``
catalog, events kept in SQLite or PostgreSQL with daily cost rollups, and cost
reports and budget status on top.

::

    from aicm_tasks.server import run_server
    run_server(api_key="dev-key", db="aicm-local.sqlite3", port=8000)
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

from aicm_tasks.server.app import create_server_app
from aicm_tasks.server.catalog import ServiceCatalog
from aicm_tasks.server.pricing import PriceBook
from aicm_tasks.server.signing import default_keys_dir
from aicm_tasks.server.store import EventStore, open_store

__all__ = [
    "EventStore",
    "PriceBook",
    "ServiceCatalog",
    "create_server_app",
    "open_store",
    "run_server",
]

logger = logging.getLogger(__name__)


def run_server(
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str,
    db: str,
    extra_services: Sequence[str] = (),
    log_level: str = "warning",
    monthly_budget_usd: float | None = None,
    customer_budgets_usd: Mapping[str, float] | None = None,
    keys_dir: Path | None = None,
) -> None:
    """Serve the local ``/track`` server with uvicorn until interrupted.

    ``db`` is an SQLite path or a ``postgresql://`` URL. ``extra_services``
    are service keys known beyond the genai-prices catalog; the budgets are in
    USD per month (see :func:`create_server_app`). ``keys_dir`` holds the key
    pair signing ``triggered_limits``: by default beside an SQLite ledger, in
    the user's data directory for PostgreSQL (:func:`default_keys_dir`).
    Binds to loopback by default: the server is for development, not exposure.
    """
    # Imported here: uvicorn is only needed to serve, not to build the app in tests.
    import uvicorn

    app = create_server_app(
        api_key=api_key,
        db=db,
        catalog=ServiceCatalog(extra_services),
        monthly_budget_usd=monthly_budget_usd,
        customer_budgets_usd=customer_budgets_usd,
        keys_dir=keys_dir if keys_dir is not None else default_keys_dir(db),
    )
    logger.info("serving the local /track server on http://%s:%d", host, port)
    # No reload (it would re-import and lose the in-process app) and no access log:
    # one log line per request costs more than the request at batch speed.
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False)
