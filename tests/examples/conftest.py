"""The examples' tests run each example against a real worker and the real local
/track server (tests/support/pipeline.py), its LLM calls answered by a stub.

Every test starts from the same place, the :func:`example` fixture: a pipeline
with its worker running, the LLM stub, a producer's environment pointing at both,
and a log folder for the example's own processes.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.examples import Example
from tests.support.llm_stub import LLMStub, llm_stub
from tests.support.pipeline import Pipeline, local_server, pipeline, pipeline_factory

__all__ = ["example", "llm_stub", "local_server", "pipeline", "pipeline_factory"]


@pytest.fixture
def example(pipeline: Pipeline, llm_stub: LLMStub, tmp_path: Path) -> Example:
    """A pipeline with one worker running, and the LLM stub, for one example."""
    pipeline.start_worker()
    return Example(pipeline, llm_stub, tmp_path)
