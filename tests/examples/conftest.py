"""The examples' tests run each example against a real worker and the real local
/track server (tests/support/pipeline.py), its LLM calls answered by a stub."""

from tests.support.llm_stub import llm_stub
from tests.support.pipeline import local_server, pipeline, pipeline_factory

__all__ = ["llm_stub", "local_server", "pipeline", "pipeline_factory"]
