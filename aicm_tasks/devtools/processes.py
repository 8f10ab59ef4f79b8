"""Start and stop the local parts of a pipeline: a private Redis, the local
server and a worker, as subprocesses. Used by ``aicm-tasks demo`` and the tests."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import redis

from aicm_tasks.errors import LocalRedisError

#: What to tell a user with no Redis at all.
REDIS_HINT = (
    "Install one (Debian/Ubuntu: `sudo apt-get install redis-server`; macOS: "
    "`brew install redis`), or run `docker run -p 127.0.0.1:6379:6379 redis:7`, or point "
    "AICM_BROKER_URL at a Redis you have."
)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(
    predicate: Callable[[], object], timeout_s: float, what: str, interval_s: float = 0.05
) -> None:
    """Poll ``predicate`` until it is truthy; raise TimeoutError naming ``what``."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if predicate():
                return
        except Exception:  # the thing may not be up yet
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(interval_s)


def redis_answers(url: str) -> bool:
    """Whether a Redis answers PING at ``url``."""
    client = redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def start_redis(
    port: int,
    data_dir: Path,
    *,
    appendonly: bool = True,
    extra_args: Sequence[str] = (),
    ready_url: str | None = None,
) -> subprocess.Popen[bytes]:
    """Start a private ``redis-server`` on 127.0.0.1:``port``, persisting in ``data_dir``.

    ``extra_args`` go to redis-server as given (a password, TLS); ``ready_url``
    is what to PING to know it is up (default ``redis://127.0.0.1:port/0``).
    Raises :class:`LocalRedisError` when ``redis-server`` is not installed.
    """
    binary = shutil.which("redis-server")
    if binary is None:
        raise LocalRedisError(f"no Redis answers and redis-server is not installed. {REDIS_HINT}")
    data_dir.mkdir(parents=True, exist_ok=True)
    args = [
        binary,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "yes" if appendonly else "no",
        "--appendfsync",
        "everysec",
        "--maxmemory-policy",
        "noeviction",
        "--dir",
        str(data_dir),
        "--daemonize",
        "no",
        "--logfile",
        str(data_dir / "redis.log"),
        *extra_args,
    ]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = ready_url or f"redis://127.0.0.1:{port}/0"
        wait_until(lambda: redis_answers(url), 15, f"redis-server on port {port}")
    except TimeoutError:
        stop_process(process)
        raise
    return process


def start_server(
    port: int,
    db_path: Path | str,
    api_key: str,
    *,
    extra_services: tuple[str, ...] = (),
    keys_dir: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``aicm-tasks serve`` on 127.0.0.1:``port``; the key travels in the environment.

    ``db_path`` is an SQLite file or a ``postgresql://`` URL; ``keys_dir`` where
    its signing key pair lives (default: the server's, see ``serve --keys-dir``).
    """
    args = [
        sys.executable,
        "-m",
        "aicm_tasks",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--db",
        str(db_path),
    ]
    for service in extra_services:
        args += ["--extra-service", service]
    if keys_dir is not None:
        args += ["--keys-dir", str(keys_dir)]
    env = {**os.environ, "AICM_SERVER_API_KEY": api_key}
    process = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_until(
            lambda: _http_ok(f"http://127.0.0.1:{port}/healthz"),
            30,
            f"the local server on port {port}",
        )
    except TimeoutError:
        stop_process(process)
        raise
    return process


def start_worker(
    env: Mapping[str, str], *, name: str, log_path: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start ``celery -A aicm_tasks worker`` with ``env`` added to this environment."""
    args = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "aicm_tasks",
        "worker",
        "--loglevel=INFO",
        "-n",
        f"{name}@%h",
    ]
    full_env = {**os.environ, **env}
    output = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
    return subprocess.Popen(args, env=full_env, stdout=output, stderr=subprocess.STDOUT)


def stop_process(
    process: subprocess.Popen[bytes], *, sig: int = signal.SIGTERM, timeout_s: float = 30
) -> int | None:
    """Send ``sig`` and wait; kill if it does not exit in time. Returns the exit code."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(sig)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
    return process.returncode


def _http_ok(url: str) -> bool:
    import httpx

    return httpx.get(url, timeout=1.0).status_code == 200
