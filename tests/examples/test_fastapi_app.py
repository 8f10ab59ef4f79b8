"""docs/examples/fastapi_app.py under uvicorn: the route and the middleware both
get their records delivered."""

from __future__ import annotations

import httpx
import pytest

from aicm_tasks.devtools.processes import free_port
from tests.support.examples import SERVICE_KEY, USAGE, Example
from tests.support.llm_stub import RECORDED_COMPLETION

pytestmark = pytest.mark.integration


def test_route_and_middleware_usage_reach_the_track_server(example: Example) -> None:
    pipeline, llm_stub = example.pipeline, example.llm
    port = free_port()
    command = ["-m", "uvicorn", "fastapi_app:app", "--host", "127.0.0.1", "--port", str(port)]
    with example.run(command, log_name="uvicorn.log", port=port):
        url = f"http://127.0.0.1:{port}"
        answer = RECORDED_COMPLETION["choices"][0]["message"]["content"]
        chat = httpx.post(f"{url}/chat", json={"text": "hi", "customer": "acme"}, timeout=30)
        assert chat.status_code == 200, chat.text
        assert chat.json() == {"answer": answer}
        summary = httpx.post(
            f"{url}/summarize", json={"text": "a long text", "customer": "globex"}, timeout=30
        )
        assert summary.json() == {"summary": answer}
        # A request that calls no LLM leaves nothing on request.state: no record.
        assert httpx.get(f"{url}/nothing-here", timeout=30).status_code == 404

    chat_id, summary_id = llm_stub.response_ids
    assert llm_stub.calls[1][1]["messages"][0]["content"] == "Summarize: a long text"
    events = example.events([chat_id, summary_id])
    assert events[chat_id]["service_key"] == SERVICE_KEY
    assert events[chat_id]["payload"] == USAGE
    assert events[chat_id]["customer_key"] == "acme"
    assert events[chat_id]["context"] == {"route": "/chat"}
    assert events[summary_id]["customer_key"] == "globex"
    assert events[summary_id]["context"] == {"route": "/summarize", "status": 200}
    pipeline.wait_drained()
    assert pipeline.store.stats().get("delivered") == 2
    assert pipeline.server.stats()["events"] == 2
