"""The official SDK's ``{}`` placeholders for unset counts, end to end: a real
``aicostmanager`` wrapper over a real ``openai`` client (a recorded answer whose
usage leaves counts unset), real Redis, a real worker, a real ``aicm-tasks serve``.

The SDK's usage extractor turns every ``None`` of a usage object into ``{}``; the
local server used to answer such a record ``error`` (so the worker dead-lettered
it). Now ``CeleryDelivery`` publishes the record without its placeholders, and a
record that still carries them (queued by an older producer, or built by the
SDK and published as is) is delivered too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

import httpx2
import openai
import pytest
from aicostmanager import OpenAIChatWrapper, Tracker

from aicm_tasks import CeleryDelivery
from aicm_tasks.producer.record import Record
from tests.support.llm import CHAT, RECORDED_IDS, recorded
from tests.support.pipeline import Pipeline

pytestmark = pytest.mark.integration

ANSWER = "openai_chat_completion.json"


def unset_counts_client(answer_id: str) -> openai.OpenAI:
    """An OpenAI client answered by the recorded completion, its usage with unset counts:
    what an OpenAI-compatible vendor answers when it reports no output count and no
    cached-token detail."""
    body = recorded(ANSWER)
    body["id"] = answer_id
    body["usage"]["completion_tokens"] = None
    body["usage"]["prompt_tokens_details"]["cached_tokens"] = None

    def answer(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, json=body)

    return openai.OpenAI(
        api_key="sk-test-not-used",
        http_client=httpx2.Client(transport=httpx2.MockTransport(answer)),
    )


class KeepingDelivery(CeleryDelivery):
    """``CeleryDelivery`` that also keeps each record as the SDK handed it over."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.handed: list[dict[str, Any]] = []

    def enqueue(self, payload: dict[str, Any]) -> dict[str, Any]:
        self.handed.append(json.loads(json.dumps(payload)))
        return super().enqueue(payload)


def test_an_sdk_wrapper_record_with_unset_counts_is_delivered_not_dead_lettered(
    pipeline: Pipeline, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AICM_INI_PATH", str(tmp_path / "AICM.INI"))
    delivery = KeepingDelivery(task=pipeline.track)
    with Tracker(delivery=delivery) as tracker:
        chat = OpenAIChatWrapper(unset_counts_client("chatcmpl-unset-1"), tracker=tracker)
        chat.chat.completions.create(**CHAT)

    # What the SDK built: its {} placeholders, where the counts go.
    (handed,) = delivery.handed
    assert handed["response_id"] == "chatcmpl-unset-1"
    assert handed["payload"]["completion_tokens"] == {}
    assert handed["payload"]["prompt_tokens_details"]["cached_tokens"] == {}
    # What CeleryDelivery published: the same record without them.
    (body,) = cast(list[bytes], pipeline.client.lrange(pipeline.settings.queue, 0, -1))
    published = json.loads(body)["payload"]
    assert "completion_tokens" not in published
    assert "cached_tokens" not in published["prompt_tokens_details"]
    assert published["prompt_tokens"] == 19

    # The SDK's record as it built it, placeholders and all, published without
    # build_record: what an older producer left in the broker.
    raw = {**handed, "response_id": "chatcmpl-unset-raw"}
    pipeline.track.producer.publish(
        Record(
            raw["response_id"],
            raw["service_key"],
            raw,
            json.dumps(raw, separators=(",", ":")).encode(),
        )
    )

    pipeline.start_worker()
    pipeline.wait_settled(2)
    stats = pipeline.store.stats()
    assert stats.get("delivered") == 2, (stats, pipeline.logs())
    assert pipeline.dead_letters.count() == 0
    events = {
        event["response_id"]: event
        for event in pipeline.server.get("/api/v1/usage/events?limit=100")["events"]
    }
    assert set(events) == {"chatcmpl-unset-1", "chatcmpl-unset-raw"}
    for event in events.values():
        # Unset counts count as absent: 19 input tokens, no output, nothing cached.
        assert (event["input_tokens"], event["output_tokens"]) == (19, 0)
        assert event["cached_input_tokens"] == 0
        assert event["cost"] is not None and event["cost"] > 0
    # The server stores a record's payload as it came.
    assert events["chatcmpl-unset-raw"]["payload"]["completion_tokens"] == {}
    assert RECORDED_IDS[ANSWER] not in events
