"""The official SDK and LLM responses, end to end: real ``aicostmanager``,
``openai`` and ``anthropic`` packages (answers from recorded JSON through their
own model classes), real Redis, a real worker, the real local server."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any, cast

import pytest
import redis
from aicostmanager import AnthropicWrapper, OpenAIChatWrapper, Tracker
from aicostmanager.usage_utils import get_usage_from_response
from openai.types.chat import ChatCompletion

from aicm_tasks import (
    CeleryDelivery,
    create_app,
    track_llm_stream_usage,
    track_llm_stream_usage_async,
    track_llm_usage,
    track_llm_usage_async,
)
from aicm_tasks.broker.messages import decode
from aicm_tasks.settings import Settings
from tests.support.llm import CHAT, MESSAGE, RecordedVendor, recorded
from tests.support.pipeline import Pipeline, PrivateRedis
from tests.support.tasks import spool_of, track_of

pytestmark = pytest.mark.integration

SDK_KEY = "sk-aicm-this-must-never-reach-redis"
STREAM_OPTIONS: dict[str, Any] = {"stream_options": {"include_usage": True}}


def delivered_events(pipeline: Pipeline, count: int) -> dict[str, dict[str, Any]]:
    """Start a worker, wait until ``count`` records are settled; the server's events by id."""
    pipeline.start_worker()
    pipeline.wait_settled(count)
    stats = pipeline.store.stats()
    assert stats.get("delivered") == count, (stats, pipeline.logs())
    events = pipeline.server.get("/api/v1/usage/events?limit=1000")["events"]
    return {event["response_id"]: event for event in events}


def queued_bodies(pipeline: Pipeline) -> list[bytes]:
    """The records queued, without the metadata line a backfill's message
    carries (its enqueue time, see broker/messages.py)."""
    # bytes: redis-py types a reply as bytes | str, whatever decode_responses says.
    messages = cast(list[bytes], pipeline.client.lrange(pipeline.settings.queue, 0, -1))
    return [decode(message).body for message in messages]


def test_the_sdk_tracker_and_its_wrappers_deliver_through_celery_delivery(
    pipeline: Pipeline, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ini = tmp_path / "AICM.INI"
    monkeypatch.setenv("AICM_INI_PATH", str(ini))
    vendor = RecordedVendor()
    openai_usage = get_usage_from_response(
        ChatCompletion.model_validate(recorded("openai_chat_completion.json")), "openai_chat"
    )

    with Tracker(aicm_api_key=SDK_KEY, delivery=CeleryDelivery(task=pipeline.track)) as tracker:
        # The wrappers, given the tracker: the one-line switch.
        chat = OpenAIChatWrapper(
            vendor.openai(), tracker=tracker, customer_key="acme", context={"route": "/chat"}
        )
        completion = chat.chat.completions.create(**CHAT)
        for _ in chat.chat.completions.create(**CHAT, stream=True, **STREAM_OPTIONS):
            pass
        claude = AnthropicWrapper(vendor.anthropic(), tracker=tracker, customer_key="acme")
        message = claude.messages.create(**MESSAGE)
        for _ in claude.messages.create(**MESSAGE, stream=True):
            pass
        with claude.messages.stream(**MESSAGE) as stream:
            for _ in stream:
                pass
        # The tracker's own methods.
        tracked = tracker.track_llm_usage(
            "openai_chat", vendor.openai().chat.completions.create(**CHAT)
        )
        raw = vendor.openai().chat.completions.create(**CHAT, stream=True, **STREAM_OPTIONS)
        assert len(list(tracker.track_llm_stream_usage("openai_chat", raw))) == 5
        plain = tracker.track("openai::gpt-4o-mini", {"input_tokens": 3}, response_id="plain-1")

        async def from_async_code() -> Any:
            async_chat = OpenAIChatWrapper(vendor.async_openai(), tracker=tracker)
            answer = await async_chat.chat.completions.create(**CHAT)
            async for _ in await async_chat.chat.completions.create(
                **CHAT, stream=True, **STREAM_OPTIONS
            ):
                pass
            client = vendor.async_anthropic()
            await tracker.track_llm_usage_async(
                "anthropic", await client.messages.create(**MESSAGE)
            )
            # The SDK's own stream method needs a service key for Anthropic: it
            # looks for the model on the chunk, and Anthropic keeps it in .message.
            async for _ in tracker.track_llm_stream_usage_async(
                "anthropic::claude-haiku-4-5-20251001",
                await client.messages.create(**MESSAGE, stream=True),
            ):
                pass
            return answer

        async_completion = asyncio.run(from_async_code())

    assert plain["response_id"] == "plain-1" and plain["result"]["status"] == "queued"
    assert tracked.aicm_response_id  # the SDK attaches what enqueue returned
    # Tracker.__init__ would write a delivery type to AICM.INI; CeleryDelivery has none.
    assert "DELIVERY_TYPE" not in (ini.read_text() if ini.exists() else "")
    bodies = queued_bodies(pipeline)
    assert len(bodies) == 12 and not any(SDK_KEY.encode() in body for body in bodies)

    events = delivered_events(pipeline, 12)
    assert len(events) == 12
    # The wrappers keep the LLM response's id as the record's response_id.
    raw_stream_id, managed_stream_id = vendor.served[3], vendor.served[4]
    for llm_id in (
        completion.id,
        message.id,
        raw_stream_id,
        managed_stream_id,
        async_completion.id,
    ):
        assert llm_id in events, (llm_id, sorted(events))
    first = events[completion.id]
    assert first["service_key"] == "openai::gpt-4o-mini"
    assert first["payload"] == openai_usage
    assert first["customer_key"] == "acme" and first["context"] == {"route": "/chat"}
    assert events[message.id]["service_key"] == "anthropic::claude-haiku-4-5-20251001"
    assert events[message.id]["payload"]["input_tokens"] == 12
    # The raw Anthropic stream: input from message_start, output from message_delta.
    assert events[raw_stream_id]["payload"]["input_tokens"] == 472
    assert events[raw_stream_id]["payload"]["output_tokens"] == 89
    assert events[managed_stream_id]["payload"]["output_tokens"] == 89
    # Given an API id, the SDK builds the service key from the response's model.
    assert events[tracked.aicm_response_id]["service_key"] == "openai::gpt-4o-mini-2024-07-18"
    assert events["plain-1"]["payload"] == {"input_tokens": 3}


def test_track_llm_usage_without_the_tracker_keeps_the_llm_response_id(
    pipeline: Pipeline,
) -> None:
    vendor = RecordedVendor()
    task = pipeline.track
    completion = vendor.openai().chat.completions.create(**CHAT)
    assert track_llm_usage("openai_chat", completion, customer_key="acme", task=task) is completion
    assert completion.aicm_response_id == completion.id
    # The same response tracked again (a retried request handler) is the same event.
    track_llm_usage("openai_chat", completion, customer_key="acme", task=task)

    stream = vendor.openai().chat.completions.create(**CHAT, stream=True, **STREAM_OPTIONS)
    assert len(list(track_llm_stream_usage("openai_chat", stream, task=task))) == 5
    claude = vendor.anthropic()
    raw = claude.messages.create(**MESSAGE, stream=True)
    kinds = [event.type for event in track_llm_stream_usage("anthropic", raw, task=task)]
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    # A stream left after its first event is tracked with what it had reached.
    left = track_llm_stream_usage(
        "anthropic", claude.messages.create(**MESSAGE, stream=True), task=task
    )
    assert next(left).type == "message_start"
    left.close()

    async def from_async_code() -> None:
        message = await vendor.async_anthropic().messages.create(**MESSAGE)
        await track_llm_usage_async("anthropic", message, context={"async": True}, task=task)
        chunks = await vendor.async_openai().chat.completions.create(
            **CHAT, stream=True, **STREAM_OPTIONS
        )
        async for _ in track_llm_stream_usage_async("openai_chat", chunks, task=task):
            pass

    asyncio.run(from_async_code())

    stream_id, raw_id, left_id, message_id, async_stream_id = vendor.served[1:]
    events = delivered_events(pipeline, 7)
    assert set(events) == {completion.id, stream_id, raw_id, left_id, message_id, async_stream_id}
    assert pipeline.server.stats()["events"] == 6  # 7 records, one response counted once
    assert events[completion.id]["service_key"] == "openai::gpt-4o-mini-2024-07-18"
    assert events[completion.id]["customer_key"] == "acme"
    assert events[stream_id]["payload"]["prompt_tokens"] == 11
    assert events[raw_id]["service_key"] == "anthropic::claude-haiku-4-5-20251001"
    assert (
        events[raw_id]["payload"]["input_tokens"],
        events[raw_id]["payload"]["output_tokens"],
    ) == (472, 89)
    assert events[left_id]["payload"]["input_tokens"] == 472
    assert events[message_id]["context"] == {"async": True}
    assert events[async_stream_id]["payload"]["completion_tokens"] == 3


def test_records_keep_what_the_sdk_built(
    pipeline: Pipeline, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AICM_INI_PATH", str(tmp_path / "AICM.INI"))
    tracker = Tracker(delivery=CeleryDelivery(task=pipeline.track))
    tracker.set_customer_key("tenant-7")
    tracker.track(
        "anthropic::claude-haiku-4-5-20251001",
        {"input_tokens": 5, "output_tokens": 6, "prompt": "secret text"},
        response_id="kept-1",
        timestamp="2025-01-02T03:04:05+00:00",
        context={"env": "test"},
        anonymize_fields=["prompt"],
    )
    batch = tracker.track_batch(
        [{"service_key": "openai::gpt-4o-mini", "usage": {"input_tokens": n}} for n in range(3)]
    )
    tracker.close()
    (record, *_) = [json.loads(body) for body in reversed(queued_bodies(pipeline))]
    assert record["response_id"] == "kept-1"
    assert float(record["timestamp"]) == 1735787045.0
    assert record["payload"]["prompt"] == "[REDACTED]"
    assert record["customer_key"] == "tenant-7" and record["context"] == {"env": "test"}
    assert len(batch["response_ids"]) == 3
    events = delivered_events(pipeline, 4)
    assert set(events) == {"kept-1", *batch["response_ids"]}


def test_closing_the_tracker_pushes_what_was_spooled_while_redis_was_down(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("AICM_INI_PATH", str(tmp_path / "AICM.INI"))
    server = PrivateRedis(tmp_path / "redis")  # not started yet: the broker is down
    settings = Settings(broker_url=server.url, spool_dir=tmp_path / "spool", publish_timeout_s=0.5)
    task = track_of(create_app(settings))
    tracker = Tracker(delivery=CeleryDelivery(task=task))
    tracker.track("openai::gpt-4o-mini", {"input_tokens": 1}, response_id="spooled-1")
    spool = spool_of(task)
    assert spool.status().records == 1
    spool.stop_drainer()  # so that only close() can push it

    caplog.set_level(logging.WARNING, logger="aicm_tasks.producer.sdk")
    tracker.close()
    assert "1 records stay spooled" in caplog.text
    server.start()
    try:
        tracker.close()
        client = redis.Redis.from_url(server.url)
        (body,) = client.lrange(settings.queue, 0, -1)
        assert json.loads(body)["response_id"] == "spooled-1"
        assert spool.status().records == 0
        client.close()
    finally:
        server.stop()
