"""A real Flower process on 127.0.0.1 for tests, and what they read from it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from aicm_tasks.devtools.processes import free_port, stop_process, wait_until
from aicm_tasks.worker.events import TASK_NAME


@dataclass
class Flower:
    """A running Flower: its base URL and the credentials its API wants."""

    base: str
    auth: tuple[str, str] | None

    def api(self, path: str) -> Any:
        response = httpx.get(f"{self.base}{path}", auth=self.auth, timeout=10)
        response.raise_for_status()
        return response.json()

    def batches(self) -> list[dict[str, Any]]:
        """Every ``aicm_tasks.deliver_batch`` task Flower holds."""
        return list(self.api(f"/api/tasks?taskname={TASK_NAME}").values())

    def metrics(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        """Flower's ``/metrics`` (no credentials needed): (sample name, labels) -> value."""
        text = httpx.get(f"{self.base}/metrics", timeout=10).text
        return {
            (sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    def metric(self, name: str, **labels: str) -> float | None:
        return self.metrics().get((name, frozenset(labels.items())))


def result_of(task: Mapping[str, Any]) -> dict[str, Any]:
    """A batch task's counts (its ``result``, on whatever event ended it)."""
    return dict(json.loads(task["result"]))


@contextmanager
def running_flower(
    env: Mapping[str, str],
    *,
    basic_auth: tuple[str, str] | None = None,
    wait_for_worker: bool = True,
) -> Iterator[Flower]:
    """``celery -A aicm_tasks flower`` on a free port of 127.0.0.1, with ``env``
    added to this environment. With ``basic_auth``, Flower is started with
    ``--basic-auth``; without, its API is opened with
    ``FLOWER_UNAUTHENTICATED_API=true`` (the README's two ways). Waits until it
    answers and (unless ``wait_for_worker`` is off) sees a worker."""
    port = free_port()
    args = [sys.executable, "-m", "celery", "-A", "aicm_tasks", "flower"]
    args += [f"--port={port}", "--address=127.0.0.1"]
    full_env = {**os.environ, **env}
    if basic_auth is not None:
        args.append(f"--basic-auth={basic_auth[0]}:{basic_auth[1]}")
    else:
        full_env["FLOWER_UNAUTHENTICATED_API"] = "true"
    process = subprocess.Popen(
        args, env=full_env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
    )
    flower = Flower(f"http://127.0.0.1:{port}", basic_auth)
    try:

        def answers() -> bool:
            assert process.poll() is None, "Flower exited"
            return httpx.get(f"{flower.base}/healthcheck", timeout=2).status_code == 200

        wait_until(answers, 60, "Flower")
        if wait_for_worker:
            wait_until(lambda: flower.api("/api/workers?refresh=1"), 60, "Flower to see the worker")
        yield flower
    finally:
        stop_process(process)
