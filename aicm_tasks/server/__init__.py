"""The local development server that speaks the ``POST /track`` contract.

It stands in for the AICostManager API on a laptop or in tests: same routes,
same authentication, same per-record answers (``queued``,
``service_key_unknown``, ``error``), with events kept in SQLite and service
keys recognised from the ``genai-prices`` catalog. It does not cost events.

::

    from aicm_tasks.server import run_server
    run_server(api_key="dev-key", db_path="aicm-local.sqlite3", port=8000)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from aicm_tasks.server.app import create_server_app
from aicm_tasks.server.catalog import ServiceCatalog
from aicm_tasks.server.store import EventStore

__all__ = ["EventStore", "ServiceCatalog", "create_server_app", "run_server"]

logger = logging.getLogger(__name__)


def run_server(
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str,
    db_path: str,
    extra_services: Sequence[str] = (),
    log_level: str = "warning",
) -> None:
    """Serve the local ``/track`` server with uvicorn until interrupted.

    ``extra_services`` are service keys known beyond the genai-prices catalog.
    Binds to loopback by default: the server is for development, not exposure.
    """
    # Imported here: uvicorn is only needed to serve, not to build the app in tests.
    import uvicorn

    app = create_server_app(
        api_key=api_key, db_path=db_path, catalog=ServiceCatalog(extra_services)
    )
    logger.info("serving the local /track server on http://%s:%d", host, port)
    # No reload (it would re-import and lose the in-process app) and no access log:
    # one log line per request costs more than the request at batch speed.
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False)
