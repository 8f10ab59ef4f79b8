"""Helpers the scenarios share: producer subprocesses, workers, warm-up, per-run errors."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.harness import Bench
from bench.stats import Figure

logger = logging.getLogger(__name__)

PRODUCER = "bench.producer"


def out_path(bench: Bench, name: str) -> Path:
    """A fresh result-file path under the run's directory."""
    directory = bench.root / "out"
    directory.mkdir(exist_ok=True)
    return directory / f"{bench.unique(name)}.json"


def read_result(path: Path) -> dict[str, Any]:
    """A producer's JSON result."""
    result: dict[str, Any] = json.loads(path.read_text())
    return result


def run_producer(
    bench: Bench,
    command: str,
    args: Sequence[str],
    env: Mapping[str, str],
    timeout_s: float = 600.0,
) -> dict[str, Any]:
    """Run ``python -m bench.producer command`` to the end; return its result."""
    out = out_path(bench, command)
    bench.run_python(PRODUCER, [command, "--out", str(out), *args], env, out.stem, timeout_s)
    return read_result(out)


def start_producer(
    bench: Bench, command: str, args: Sequence[str], env: Mapping[str, str]
) -> tuple[subprocess.Popen[bytes], Path]:
    """Start a producer in the background; return it and its result path."""
    out = out_path(bench, command)
    process = bench.python(PRODUCER, [command, "--out", str(out), *args], env, out.stem)
    return process, out


def wait_result(
    bench: Bench, process: subprocess.Popen[bytes], out: Path, timeout_s: float
) -> dict[str, Any]:
    """Wait for a background producer's result (it may keep running)."""
    deadline = time.monotonic() + timeout_s
    while not out.exists():
        if process.poll() is not None and not out.exists():
            raise RuntimeError(f"producer exited {process.returncode}: {bench.log_tail(out.stem)}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"no result from {out.stem} in {timeout_s:.0f}s")
        time.sleep(0.02)
    return read_result(out)


def celery_worker_args(app_module: str, name: str, *extra: str) -> list[str]:
    """``python -m celery -A app worker --loglevel=WARNING -n name@%h extra...``."""
    return [
        sys.executable, "-m", "celery", "-A", app_module, "worker",
        "--loglevel=WARNING", "-n", f"{name}@%h", *extra,
    ]  # fmt: skip


def start_aicm_worker(bench: Bench, queue: str, **env: str) -> subprocess.Popen[bytes]:
    """``celery -A aicm_tasks worker`` on ``queue`` with the default settings."""
    name = bench.unique("aicm-worker")
    return bench.spawn(celery_worker_args("aicm_tasks", name), bench.aicm_env(queue, **env), name)


def warm_up_aicm(bench: Bench, queue: str, records: int = 100) -> None:
    """Push a few records through a running worker, then clear the stub."""
    run_producer(bench, "prefill-aicm", ["--count", str(records)], bench.aicm_env(queue))
    bench.stub.wait_for(records, timeout_s=60)
    bench.stub.reset()


def attempt(figures: Sequence[Figure], what: str, error: BaseException) -> None:
    """Record a failed run on its figures and log it; the benchmark goes on."""
    message = f"{what}: {type(error).__name__}: {error}"
    logger.error("run failed: %s", message)
    for figure in figures:
        figure.errors.append(message)
