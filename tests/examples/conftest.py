"""The examples' tests run each example against a real worker and the real local
/track server (tests/support/pipeline.py), its LLM calls answered by a stub.

Every test starts from the same place, the :func:`example` fixture: a pipeline
with its worker running, the LLM stub, a producer's environment pointing at both,
and a log folder for the example's own processes.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.examples import EXAMPLES, example_env, run_example, wait_for_events
from tests.support.llm_stub import LLMStub, llm_stub
from tests.support.pipeline import Pipeline, local_server, pipeline, pipeline_factory

__all__ = ["Example", "example", "llm_stub", "local_server", "pipeline", "pipeline_factory"]


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


@pytest.fixture
def example(pipeline: Pipeline, llm_stub: LLMStub, tmp_path: Path) -> Example:
    """A pipeline with one worker running, and the LLM stub, for one example."""
    pipeline.start_worker()
    return Example(pipeline, llm_stub, tmp_path)
