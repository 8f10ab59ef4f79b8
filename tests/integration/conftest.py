"""Integration fixtures live in tests/support/pipeline.py, shared with tests/reliability."""

from tests.support.pipeline import local_server, pipeline, pipeline_factory

__all__ = ["local_server", "pipeline", "pipeline_factory"]
