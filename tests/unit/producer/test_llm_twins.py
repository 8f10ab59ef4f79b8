"""The sync and async entry points of producer/llm.py share one implementation:
the same record from the same response, and the same rule for a tracking error
at a stream's end (raised when the stream ran out, only logged when it was left
early, so the caller's own exception is never replaced)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Iterable
from typing import Any

import pytest
import redis
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from aicm_tasks import create_app
from aicm_tasks.producer.llm import (
    track_llm_stream_usage,
    track_llm_stream_usage_async,
    track_llm_usage,
    track_llm_usage_async,
)
from aicm_tasks.settings import Settings
from tests.conftest import TEST_REDIS_URL
from tests.support.llm import recorded

CHUNKS = [
    ChatCompletionChunk.model_validate(
        {
            "id": "chunk-1",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "gpt-4o-mini",
            "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": None}],
        }
    ),
    ChatCompletionChunk.model_validate(
        {
            "id": "chunk-1",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "gpt-4o-mini",
            "choices": [],
            "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
        }
    ),
]


class BrokenProducer:
    """A producer whose broker and spool both refuse: every publish raises."""

    def track(self, fields: dict[str, Any]) -> str:
        raise RuntimeError("broker and spool both refused")

    def build(self, args: tuple[Any, ...], fields: dict[str, Any]) -> Any:
        raise RuntimeError("broker and spool both refused")


class BrokenTask:
    producer = BrokenProducer()


@pytest.fixture
def track(real_redis: redis.Redis):
    return create_app(Settings(broker_url=TEST_REDIS_URL)).tasks["aicm_tasks.track"]


def queued(client: redis.Redis) -> list[dict]:
    return [json.loads(m) for m in reversed(client.lrange("aicm.tracking", 0, -1))]


async def _aiter(items: Iterable[Any]) -> AsyncIterator[Any]:
    for item in items:
        yield item


def consume(stream_kind: str, task: Any, *, leave_after: int | None = None) -> list[Any]:
    """Run a tracked stream (sync or async) to its end, or leave it after
    ``leave_after`` chunks by raising the caller's own ValueError."""
    seen: list[Any] = []
    if stream_kind == "sync":
        with contextlib.closing(track_llm_stream_usage("openai_chat", CHUNKS, task=task)) as s:
            for chunk in s:
                if leave_after is not None and len(seen) == leave_after:
                    raise ValueError("the caller's own error")
                seen.append(chunk)
        return seen

    async def run() -> None:
        stream = track_llm_stream_usage_async("openai_chat", _aiter(CHUNKS), task=task)
        async with contextlib.aclosing(stream) as s:
            async for chunk in s:
                if leave_after is not None and len(seen) == leave_after:
                    raise ValueError("the caller's own error")
                seen.append(chunk)

    asyncio.run(run())
    return seen


def test_sync_and_async_track_the_same_record_from_one_response(track, real_redis) -> None:
    completion = ChatCompletion.model_validate(recorded("openai_chat_completion.json"))
    fields = {"customer_key": "acme", "context": {"k": 1}, "api_key_alias": None, "task": track}
    track_llm_usage("openai_chat", completion, response_id="sync", **fields)
    asyncio.run(track_llm_usage_async("openai_chat", completion, response_id="async", **fields))
    first, second = queued(real_redis)
    assert (first["response_id"], second["response_id"]) == ("sync", "async")
    for key in ("service_key", "payload", "customer_key", "context"):
        assert first[key] == second[key], key
    assert getattr(completion, "aicm_response_id") == "async"  # noqa: B009 (set at run time)


@pytest.mark.parametrize("stream_kind", ["sync", "async"])
def test_a_stream_is_tracked_once_with_its_merged_usage(stream_kind, track, real_redis) -> None:
    assert consume(stream_kind, track) == CHUNKS
    (record,) = queued(real_redis)
    assert record["service_key"] == "openai::gpt-4o-mini"
    assert record["response_id"] == "chunk-1"
    assert record["payload"]["prompt_tokens"] == 5


@pytest.mark.parametrize("stream_kind", ["sync", "async"])
def test_a_tracking_error_at_the_end_of_a_whole_stream_raises(stream_kind) -> None:
    with pytest.raises(RuntimeError, match="both refused"):
        consume(stream_kind, BrokenTask())


@pytest.mark.parametrize("stream_kind", ["sync", "async"])
def test_a_tracking_error_of_a_stream_left_early_never_replaces_the_callers_error(
    stream_kind, caplog
) -> None:
    caplog.set_level(logging.ERROR, logger="aicm_tasks.producer.llm")
    # Left after the usage chunk arrived, so there is something to track.
    with pytest.raises(ValueError, match="the caller's own error"):
        consume(stream_kind, BrokenTask(), leave_after=1)
    assert "usage of a stream left early was not tracked" in caplog.text
