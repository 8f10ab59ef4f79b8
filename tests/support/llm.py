"""LLM vendor clients (the real ``openai`` and ``anthropic`` SDKs) answered from
recorded responses in tests/fixtures/llm, through the SDKs' own HTTP stack and
model classes; nothing leaves the process."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import anthropic
import httpx2
import openai
from anthropic import Anthropic, AsyncAnthropic
from openai import AsyncOpenAI, OpenAI

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "llm"

#: The id each recorded response carries; every answer gets a fresh one.
RECORDED_IDS = {
    "openai_chat_completion.json": "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT",
    "openai_chat_stream.sse": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
    "anthropic_message.json": "msg_01XFDUDYJgAACzvnptvVoYEL",
    "anthropic_stream.sse": "msg_014p7gG3wDgGV9EUtLvnow3U",
}


def recorded(name: str) -> Any:
    """A recorded JSON response, parsed."""
    return json.loads((FIXTURES / name).read_text())


class RecordedVendor:
    """Answers OpenAI chat completions and Anthropic messages from the recordings.

    Each answer's id gets a suffix (``-1``, ``-2``, ...) so that every call is a
    distinct response; ``served`` lists the ids in the order they were served.
    """

    def __init__(self) -> None:
        self.served: list[str] = []
        self._numbers = itertools.count(1)

    def answer(self, request: httpx2.Request) -> httpx2.Response:
        body = json.loads(request.content)
        stream = bool(body.get("stream"))
        if request.url.path.endswith("/chat/completions"):
            name = "openai_chat_stream.sse" if stream else "openai_chat_completion.json"
        elif request.url.path.endswith("/messages"):
            name = "anthropic_stream.sse" if stream else "anthropic_message.json"
        else:
            return httpx2.Response(404, json={"error": f"no recording for {request.url.path}"})
        fresh_id = f"{RECORDED_IDS[name]}-{next(self._numbers)}"
        self.served.append(fresh_id)
        text = (FIXTURES / name).read_text().replace(RECORDED_IDS[name], fresh_id)
        content_type = "text/event-stream" if stream else "application/json"
        return httpx2.Response(200, content=text.encode(), headers={"content-type": content_type})

    async def answer_async(self, request: httpx2.Request) -> httpx2.Response:
        return self.answer(request)

    def openai(self) -> OpenAI:
        return openai.OpenAI(
            api_key="sk-test-not-used",
            http_client=httpx2.Client(transport=httpx2.MockTransport(self.answer)),
        )

    def async_openai(self) -> AsyncOpenAI:
        return openai.AsyncOpenAI(
            api_key="sk-test-not-used",
            http_client=httpx2.AsyncClient(transport=httpx2.MockTransport(self.answer_async)),
        )

    def anthropic(self) -> Anthropic:
        return anthropic.Anthropic(
            api_key="sk-test-not-used",
            http_client=httpx2.Client(transport=httpx2.MockTransport(self.answer)),
        )

    def async_anthropic(self) -> AsyncAnthropic:
        return anthropic.AsyncAnthropic(
            api_key="sk-test-not-used",
            http_client=httpx2.AsyncClient(transport=httpx2.MockTransport(self.answer_async)),
        )


CHAT: dict[str, Any] = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
MESSAGE: dict[str, Any] = {
    "model": "claude-haiku-4-5-20251001",
    "max_tokens": 100,
    "messages": [{"role": "user", "content": "hi"}],
}
