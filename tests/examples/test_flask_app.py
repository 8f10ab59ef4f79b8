"""docs/examples/flask_app.py under Flask's own server: the view's record is delivered."""

from __future__ import annotations

import httpx
import pytest

from aicm_tasks.devtools.processes import free_port
from tests.support.examples import SERVICE_KEY, USAGE, Example
from tests.support.llm_stub import RECORDED_COMPLETION

pytestmark = pytest.mark.integration


def test_the_views_usage_reaches_the_track_server(example: Example) -> None:
    port = free_port()
    command = [
        "-m",
        "flask",
        "--app",
        "flask_app",
        "run",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    with example.run(command, log_name="flask.log", port=port):
        answers = [
            httpx.post(
                f"http://127.0.0.1:{port}/chat",
                json={"text": f"question {n}", "customer": f"cust{n}"},
                timeout=30,
            )
            for n in range(3)
        ]
    assert [a.json() for a in answers] == [
        {"answer": RECORDED_COMPLETION["choices"][0]["message"]["content"]}
    ] * 3

    events = example.events(example.llm.response_ids)
    assert len(events) == 3
    for n, response_id in enumerate(example.llm.response_ids):
        assert events[response_id]["service_key"] == SERVICE_KEY
        assert events[response_id]["payload"] == USAGE
        assert events[response_id]["customer_key"] == f"cust{n}"
        assert events[response_id]["context"] == {"route": "/chat"}
