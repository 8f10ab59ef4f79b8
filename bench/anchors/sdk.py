"""Anchor: the official SDK (``aicostmanager==0.3.2``), ``Tracker`` with ``PersistentDelivery``.

Every SDK object is pointed at a temporary INI file (``AICM.INI``), SQLite
queue and log file, and at the stub. Limits are off (``AICM_LIMITS_ENABLED =
false`` in the INI, the SDK's default): the SDK still reads the INI on every
``track()`` to learn that, which is part of its cost as users pay it.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from aicostmanager import Tracker
from aicostmanager.delivery import DeliveryConfig
from aicostmanager.delivery.persistent import PersistentDelivery
from aicostmanager.ini_manager import IniManager

from bench.records import API_KEY

#: The SDK's queue table, as ``PersistentDelivery.__init__`` creates it.
CREATE_QUEUE_SQL = """
CREATE TABLE IF NOT EXISTS queue (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    payload TEXT NOT NULL,
    status TEXT NOT NULL,
    retry_count INTEGER NOT NULL DEFAULT 0,
    scheduled_at REAL NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
)
"""


def write_ini(directory: Path, api_base: str) -> Path:
    """Write a fresh ``AICM.INI`` in ``directory`` for the stub; return its path."""
    directory.mkdir(parents=True, exist_ok=True)
    ini = directory / "AICM.INI"
    ini.write_text(
        "[tracker]\n"
        f"AICM_API_BASE = {api_base}\n"
        "AICM_API_URL = /api/v1\n"
        "AICM_LIMITS_ENABLED = false\n"
        f"AICM_LOG_FILE = {directory / 'aicm.log'}\n"
        "AICM_LOG_LEVEL = WARNING\n"
    )
    return ini


def make_delivery(directory: Path, api_base: str, db_path: Path) -> PersistentDelivery:
    """A ``PersistentDelivery`` on ``db_path`` (its delivery thread starts now)."""
    ini = directory / "AICM.INI"
    if not ini.exists():
        write_ini(directory, api_base)
    config = DeliveryConfig(
        ini_manager=IniManager(str(ini)),
        aicm_api_key=API_KEY,
        aicm_api_base=api_base,
        aicm_api_url="/api/v1",
        log_file=str(directory / "aicm.log"),
        log_level="WARNING",
    )
    return PersistentDelivery(config=config, db_path=str(db_path))


def make_tracker(directory: Path, api_base: str, db_path: Path) -> Tracker:
    """A ``Tracker(delivery=PersistentDelivery(...))`` as a user would build one."""
    delivery = make_delivery(directory, api_base, db_path)
    return Tracker(aicm_api_key=API_KEY, ini_path=str(directory / "AICM.INI"), delivery=delivery)


def prefill(db_path: Path, records: Iterable[dict[str, Any]]) -> int:
    """Insert queued rows exactly as ``PersistentDelivery._enqueue`` does, in one transaction."""
    now = time.time()
    conn = sqlite3.connect(db_path)
    try:
        conn.execute("PRAGMA journal_mode=WAL;")
        conn.execute(CREATE_QUEUE_SQL)
        rows = [(json.dumps(record), now, now, now) for record in records]
        with conn:
            conn.executemany(
                "INSERT INTO queue (payload, status, retry_count, scheduled_at, created_at, "
                "updated_at) VALUES (?, 'queued', 0, ?, ?, ?)",
                rows,
            )
        return len(rows)
    finally:
        conn.close()
