"""Run the runnable examples of docs/examples as their users would: real
processes configured by environment variables, against a test's pipeline."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aicm_tasks.devtools.processes import stop_process, wait_until
from tests.support.llm_stub import RECORDED_COMPLETION, LLMStub
from tests.support.pipeline import LocalServer, Pipeline

REPO = Path(__file__).resolve().parents[2]
#: Where the examples live; each test runs its example from here.
EXAMPLES = REPO / "docs" / "examples"
#: The service key every example builds from the recorded completion's model.
SERVICE_KEY = f"openai::{RECORDED_COMPLETION['model']}"
#: The usage payload the examples send for the recorded completion.
USAGE = {key: value for key, value in RECORDED_COMPLETION["usage"].items() if value is not None}


def example_env(pipeline: Pipeline, llm: LLMStub, **extra: str) -> dict[str, str]:
    """A producer's environment: the pipeline's broker and queue, the LLM stub,
    and no API key (a web process never holds it)."""
    env = {**os.environ, **pipeline.cli_env(), **llm.env(), **extra}
    env.pop("AICM_API_KEY", None)
    # The examples import this checkout's aicm_tasks, whatever the cwd.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    return env


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@contextmanager
def run_example(
    args: Sequence[str], *, cwd: Path, env: dict[str, str], log_path: Path, port: int | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """Start ``python <args>`` in ``cwd``; with ``port``, wait until it listens there.
    Stopped with SIGTERM when the block ends."""
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, *args], cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        if port is not None:
            wait_until(
                lambda: _listening(port) or process.poll() is not None,
                60,
                f"{' '.join(args)} to listen on {port}",
            )
            assert process.poll() is None, log_path.read_text(errors="replace")[-4000:]
        yield process
    finally:
        stop_process(process)


def wait_for_events(
    server: LocalServer, response_ids: Iterable[str], timeout_s: float = 60
) -> dict[str, dict[str, Any]]:
    """Wait until the /track server has stored every one of ``response_ids``;
    returns those events by response_id."""
    wanted = set(response_ids)
    found: dict[str, dict[str, Any]] = {}

    def arrived() -> bool:
        events = server.get("/api/v1/usage/events?limit=1000")["events"]
        found.update({e["response_id"]: e for e in events if e["response_id"] in wanted})
        return set(found) == wanted

    wait_until(arrived, timeout_s, f"{len(wanted)} events at the /track server", interval_s=0.1)
    return found


@dataclass
class Example:
    """One example's test bench: the running pipeline, the LLM stub, where logs go."""

    pipeline: Pipeline
    llm: LLMStub
    log_dir: Path

    def env(self, **extra: str) -> dict[str, str]:
        """A producer's environment for the example (plus ``extra`` variables)."""
        return example_env(self.pipeline, self.llm, **extra)

    @contextmanager
    def run(
        self,
        args: Sequence[str],
        *,
        log_name: str,
        cwd: Path = EXAMPLES,
        port: int | None = None,
        env: dict[str, str] | None = None,
    ) -> Iterator[subprocess.Popen[bytes]]:
        """Run ``python <args>`` as the example's user would (see run_example)."""
        with run_example(
            args,
            cwd=cwd,
            env=env if env is not None else self.env(),
            log_path=self.log(log_name),
            port=port,
        ) as process:
            yield process

    def log(self, name: str) -> Path:
        """Where the example's process ``name`` writes its output."""
        return self.log_dir / name

    def events(self, response_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """The /track server's events for ``response_ids``, once all arrived."""
        return wait_for_events(self.pipeline.server, response_ids)
