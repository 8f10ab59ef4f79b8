"""The benchmark's private world: one Redis, one stub server, and the processes it spawns.

Everything runs on 127.0.0.1: a private ``redis-server`` on a free port (never
the shared one on 6379) and the stub on another. Child processes get a clean
environment: no ``AICM_*`` or ``BENCH_*`` variable leaks in from the caller's
shell, so nothing can reach a Redis the benchmark does not own.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import redis

from aicm_tasks.devtools.processes import free_port, start_redis, stop_process, wait_until
from bench.records import API_KEY
from bench.stub_client import StubClient

logger = logging.getLogger(__name__)

#: The project root: children run here so ``bench`` and ``aicm_tasks`` import.
REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Bench:
    """A running private Redis and stub, and a registry of spawned processes."""

    root: Path
    redis_url: str
    redis: redis.Redis
    stub: StubClient
    #: The stub server's process id (for its CPU time).
    stub_pid: int = 0
    _children: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _names: Iterator[int] = field(default_factory=itertools.count)

    @property
    def stub_base_url(self) -> str:
        """``http://127.0.0.1:<port>``: the ``AICM_API_BASE`` of every contender."""
        return self.stub.base_url

    def unique(self, prefix: str) -> str:
        """A name not used before in this run (queues, key prefixes, files)."""
        return f"{prefix}-{os.getpid()}-{next(self._names)}"

    def reset(self) -> None:
        """Empty the private Redis and the stub between runs."""
        self.redis.flushall()
        self.stub.reset()

    def redis_commands(self) -> int:
        """Commands the private Redis has executed so far (``INFO commandstats``)."""
        stats = self.redis.info("commandstats")
        return sum(int(entry["calls"]) for entry in stats.values())

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """This process's environment without ``AICM_*``/``BENCH_*``, plus ``extra``."""
        clean = {k: v for k, v in os.environ.items() if not k.startswith(("AICM_", "BENCH_"))}
        clean["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO_ROOT), clean.get("PYTHONPATH", "")) if p
        )
        clean.update(extra or {})
        return clean

    def aicm_env(self, queue: str, **extra: str) -> dict[str, str]:
        """Environment for an aicm-tasks producer or worker on ``queue``."""
        return self.env(
            {
                "AICM_BROKER_URL": self.redis_url,
                "AICM_QUEUE": queue,
                "AICM_KEY_PREFIX": f"{queue}-keys",
                "AICM_API_KEY": API_KEY,
                "AICM_API_BASE": self.stub_base_url,
                **extra,
            }
        )

    def anchor_env(self, queue: str) -> dict[str, str]:
        """Environment for a bench Celery anchor app (worker or producer) on ``queue``."""
        return self.env(
            {
                "BENCH_BROKER_URL": self.redis_url,
                "BENCH_QUEUE": queue,
                "BENCH_TRACK_URL": self.stub.track_url,
            }
        )

    def spawn(
        self, args: Sequence[str], env: Mapping[str, str], log_name: str
    ) -> subprocess.Popen[bytes]:
        """Start ``args`` in the repo root, output to ``<root>/logs/<log_name>.log``."""
        log_dir = self.root / "logs"
        log_dir.mkdir(exist_ok=True)
        with open(log_dir / f"{log_name}.log", "ab") as log:
            process = subprocess.Popen(
                list(args), env=dict(env), cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT
            )
        self._children.append(process)
        return process

    def python(
        self, module: str, args: Sequence[str], env: Mapping[str, str], log_name: str
    ) -> subprocess.Popen[bytes]:
        """Start ``python -m module args`` with this interpreter."""
        return self.spawn([sys.executable, "-m", module, *args], env, log_name)

    def run_python(
        self,
        module: str,
        args: Sequence[str],
        env: Mapping[str, str],
        log_name: str,
        timeout_s: float = 600.0,
    ) -> None:
        """Run ``python -m module args`` to completion; raise if it fails."""
        process = self.python(module, args, env, log_name)
        try:
            code = process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            stop_process(process, timeout_s=5)
            raise RuntimeError(f"{module} {' '.join(args)} took over {timeout_s:.0f}s") from None
        if code != 0:
            raise RuntimeError(
                f"{module} {args[0] if args else ''} exited {code}; see {self.log_tail(log_name)}"
            )

    def log_tail(self, log_name: str, lines: int = 5) -> str:
        """The last lines of a child's log, for error messages."""
        path = self.root / "logs" / f"{log_name}.log"
        try:
            text = path.read_text(errors="replace").strip().splitlines()[-lines:]
        except OSError:
            return str(path)
        return f"{path}: " + " | ".join(text)

    def stop(self, process: subprocess.Popen[bytes], timeout_s: float = 20.0) -> None:
        """SIGTERM one child and wait (kill after ``timeout_s``)."""
        stop_process(process, timeout_s=timeout_s)
        with contextlib.suppress(ValueError):
            self._children.remove(process)

    def stop_all(self) -> None:
        """Stop every child still running, one by one."""
        for process in list(self._children):
            self.stop(process, timeout_s=10)


@contextlib.contextmanager
def open_bench(keep_dir: bool = False) -> Iterator[Bench]:
    """Start a private Redis and the stub; stop them and every child at exit."""
    root = Path(tempfile.mkdtemp(prefix="aicm-bench-"))
    redis_port, stub_port = free_port(), free_port()
    redis_process = start_redis(redis_port, root / "redis", appendonly=False)
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    client = redis.Redis.from_url(redis_url)
    bench: Bench | None = None
    stub_process: subprocess.Popen[bytes] | None = None
    try:
        stub = StubClient(f"http://127.0.0.1:{stub_port}")
        bench = Bench(root=root, redis_url=redis_url, redis=client, stub=stub)
        stub_process = bench.python(
            "bench.stub_server", ["--port", str(stub_port)], bench.env(), "stub"
        )
        bench.stub_pid = stub_process.pid
        wait_until(lambda: stub.stats() is not None, 30, f"the stub on port {stub_port}")
        logger.info("private redis %s, stub %s, files in %s", redis_url, stub.base_url, root)
        yield bench
    finally:
        if bench is not None:
            bench.stop_all()
            bench.stub.close()
        if stub_process is not None:
            stop_process(stub_process, timeout_s=10)
        client.close()
        stop_process(redis_process, timeout_s=10)
        if not keep_dir:
            shutil.rmtree(root, ignore_errors=True)
        else:
            logger.info("kept %s", root)
