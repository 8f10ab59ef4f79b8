"""A ``PersistentDelivery`` queue file written by the real official SDK, with
records in each state it leaves behind: ``failed`` (retries exhausted),
``queued`` (waiting for a retry) and ``processing`` (in flight when the app was
killed)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aicostmanager import PersistentDelivery, Tracker
from aicostmanager.delivery import DeliveryConfig
from aicostmanager.ini_manager import IniManager

from aicm_tasks.devtools.processes import free_port, wait_until

#: Records with an API id instead of a service key: the SDK queues them, the
#: server would refuse them, the importer leaves them in the file.
BAD_SERVICE_KEY = "openai_chat"


@dataclass
class SdkQueue:
    path: Path
    #: response_id -> the arguments given to ``Tracker.track``, by SDK status.
    records: dict[str, dict[str, dict[str, Any]]]

    def statuses(self) -> dict[str, int]:
        with contextlib.closing(sqlite3.connect(self.path)) as conn:
            return dict(
                conn.execute("SELECT status, COUNT(*) FROM queue GROUP BY status").fetchall()
            )


def _delivery(
    db: Path, ini: Path, api_base: str, max_retries: int, timeout_s: float
) -> PersistentDelivery:
    config = DeliveryConfig(
        ini_manager=IniManager(str(ini)),
        aicm_api_key="sk-sdk-test",
        aicm_api_base=api_base,
        timeout=timeout_s,
        log_file=str(ini.parent / "aicm.log"),
    )
    return PersistentDelivery(
        config=config,
        db_path=str(db),
        max_attempts=1,
        max_retries=max_retries,
        batch_interval=0.05,
        poll_interval=0.01,
    )


def _arguments(prefix: str, count: int) -> dict[str, dict[str, Any]]:
    return {
        f"{prefix}-{n}": {
            "service_key": "openai::gpt-4o-mini",
            "usage": {"input_tokens": 100 + n, "output_tokens": n},
            "customer_key": f"customer-{n % 2}",
            "context": {"phase": prefix, "n": n},
            "timestamp": f"2025-03-0{n + 1}T10:00:00+00:00",
        }
        for n in range(count)
    }


def _count(db: Path, sql: str) -> int:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return int(conn.execute(sql).fetchone()[0])


def write_sdk_queue(
    directory: Path, failed: int = 2, queued: int = 3, processing: int = 2
) -> SdkQueue:
    """Write ``directory/queue.db`` through the SDK: every delivery attempt fails."""
    directory.mkdir(parents=True, exist_ok=True)
    db, ini = directory / "queue.db", directory / "AICM.INI"
    refused = f"http://127.0.0.1:{free_port()}"  # nothing listens: connection refused
    records: dict[str, dict[str, dict[str, Any]]] = {}

    # failed: one attempt, no retry.
    records["failed"] = _arguments("failed", failed)
    with Tracker(ini_path=str(ini), delivery=_delivery(db, ini, refused, 0, 5)) as tracker:
        for response_id, args in records["failed"].items():
            tracker.track(response_id=response_id, **args)
        wait_until(
            lambda: _count(db, "SELECT COUNT(*) FROM queue WHERE status='failed'") == failed,
            60,
            "failed rows",
        )

    # queued: failed once, waiting for the retry the SDK scheduled.
    records["queued"] = _arguments("queued", queued)
    records["queued"]["queued-api-id"] = {
        "service_key": BAD_SERVICE_KEY,
        "usage": {"input_tokens": 1},
    }
    with Tracker(ini_path=str(ini), delivery=_delivery(db, ini, refused, 5, 5)) as tracker:
        for response_id, args in records["queued"].items():
            tracker.track(response_id=response_id, **args)
        wait_until(
            lambda: (
                _count(db, "SELECT COUNT(*) FROM queue WHERE status='queued' AND retry_count > 0")
                == queued + 1
            ),
            60,
            "rescheduled rows",
        )

    # processing: in flight to a server that never answers when the app is killed.
    records["processing"] = _arguments("processing", processing)
    with socket.create_server(("127.0.0.1", 0)) as silent:  # listens, never accepts
        api_base = f"http://127.0.0.1:{silent.getsockname()[1]}"
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.support.sdk_queue",
                str(db),
                str(ini),
                api_base,
                str(processing),
            ],
            env={**os.environ, "AICM_INI_PATH": str(ini)},
        )
        try:
            wait_until(
                lambda: (
                    _count(db, "SELECT COUNT(*) FROM queue WHERE status='processing'") == processing
                ),
                60,
                "rows in flight",
            )
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait()
    return SdkQueue(db, records)


def _track_in_flight(db: Path, ini: Path, api_base: str, count: int) -> None:
    tracker = Tracker(ini_path=str(ini), delivery=_delivery(db, ini, api_base, 5, 600))
    for response_id, args in _arguments("processing", count).items():
        tracker.track(response_id=response_id, **args)
    signal.pause()  # until killed


if __name__ == "__main__":
    _track_in_flight(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], int(sys.argv[4]))
