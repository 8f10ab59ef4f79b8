"""track_llm_usage's service keys, ids and the cases where nothing is tracked,
with real SDK response objects built from recorded JSON."""

from __future__ import annotations

import json
import logging

import pytest
import redis
from anthropic.types import Message
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from aicm_tasks import create_app, track_llm_stream_usage, track_llm_usage
from aicm_tasks.errors import RecordValueError
from aicm_tasks.producer.llm import api_id_of, service_key_for
from aicm_tasks.settings import Settings
from tests.conftest import TEST_REDIS_URL
from tests.support.llm import recorded
from tests.support.tasks import track_of


@pytest.fixture
def track(real_redis: redis.Redis):
    return track_of(create_app(Settings(broker_url=TEST_REDIS_URL)))


def queued(client: redis.Redis) -> list[dict]:
    return [json.loads(m) for m in reversed(client.lrange("aicm.tracking", 0, -1))]


def test_api_ids_and_service_keys_follow_the_sdk() -> None:
    assert api_id_of("openai::gpt-4o") == "openai_chat"
    assert api_id_of("google::gemini-2.5-flash") == "gemini"
    assert api_id_of("anthropic") == "anthropic"
    assert service_key_for("openai_responses", "gpt-5") == "openai::gpt-5"
    assert service_key_for("gemini", "gemini-2.5-flash") == "google::gemini-2.5-flash"
    assert service_key_for("acme::custom", "ignored") == "acme::custom"
    with pytest.raises(RecordValueError, match="names no model"):
        service_key_for("openai_chat", None)


def test_an_explicit_response_id_and_service_key_win(track, real_redis) -> None:
    completion = ChatCompletion.model_validate(recorded("openai_chat_completion.json"))
    track_llm_usage("openai::gpt-4o-mini", completion, response_id="mine", task=track)
    (record,) = queued(real_redis)
    assert (record["service_key"], record["response_id"]) == ("openai::gpt-4o-mini", "mine")
    assert record["payload"]["prompt_tokens"] == 19


def test_a_response_without_usage_is_not_tracked(track, real_redis, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="aicm_tasks.producer.llm")
    track_llm_usage("openai_chat", {"id": "x", "model": "m"}, task=track)
    assert queued(real_redis) == []
    assert "no usage found in the response" in caplog.text


def test_an_openai_stream_without_usage_says_how_to_get_it(track, real_redis, caplog) -> None:
    chunk = json.loads(
        '{"id":"c1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini",'
        '"choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":null}]}'
    )
    chunks = [ChatCompletionChunk.model_validate(chunk)] * 3
    caplog.set_level(logging.WARNING, logger="aicm_tasks.producer.llm")
    assert list(track_llm_stream_usage("openai_chat", chunks, task=track)) == chunks
    assert queued(real_redis) == []
    assert "include_usage" in caplog.text


def test_an_anthropic_message_uses_its_own_model_and_id(track, real_redis) -> None:
    message = Message.model_validate(recorded("anthropic_message.json"))
    track_llm_usage("anthropic", message, task=track)
    (record,) = queued(real_redis)
    assert record["service_key"] == "anthropic::claude-haiku-4-5-20251001"
    # Set on the message by track_llm_usage, at run time: not in its model class.
    assert record["response_id"] == message.id == message.aicm_response_id  # type: ignore[attr-defined]
