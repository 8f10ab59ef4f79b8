"""docs/examples/django_site under ``manage.py runserver``: the view's record is delivered."""

from __future__ import annotations

import httpx
import pytest

from aicm_tasks.devtools.processes import free_port
from tests.support.examples import EXAMPLES, SERVICE_KEY, USAGE, Example
from tests.support.llm_stub import RECORDED_COMPLETION

pytestmark = pytest.mark.integration


def test_the_views_usage_reaches_the_track_server(example: Example) -> None:
    port = free_port()
    command = ["manage.py", "runserver", f"127.0.0.1:{port}", "--noreload"]
    with example.run(command, cwd=EXAMPLES / "django_site", log_name="django.log", port=port):
        url = f"http://127.0.0.1:{port}/chat"
        answer = httpx.post(url, json={"text": "hello", "customer": "initech"}, timeout=30)
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"answer": RECORDED_COMPLETION["choices"][0]["message"]["content"]}
        assert httpx.get(url, timeout=30).status_code == 405  # POST only: no LLM call

    (response_id,) = example.llm.response_ids
    event = example.events([response_id])[response_id]
    assert event["service_key"] == SERVICE_KEY
    assert event["payload"] == USAGE
    assert event["customer_key"] == "initech"
    assert event["context"] == {"route": "/chat"}
