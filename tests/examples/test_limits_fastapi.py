"""docs/examples/limits_fastapi.py under uvicorn: a limited customer is refused before
the LLM is called; another customer is served and tracked."""

from __future__ import annotations

import time

import httpx
import pytest

from aicm_tasks.broker.limits import DEFAULT_SOURCE, LimitStore
from aicm_tasks.devtools.processes import free_port
from tests.support.examples import Example
from tests.support.limits import limit

pytestmark = pytest.mark.integration


def test_a_limited_customer_is_refused_before_the_llm_call(example: Example) -> None:
    pipeline, llm_stub = example.pipeline, example.llm
    store = LimitStore(pipeline.client, pipeline.store.keys)
    store.write(DEFAULT_SOURCE, (limit("openai::gpt-4o", "acme"),), issued_at=time.time())
    port = free_port()
    command = ["-m", "uvicorn", "limits_fastapi:app", "--host", "127.0.0.1", "--port", str(port)]
    env = example.env(AICM_LIMITS_ENABLED="true")
    with example.run(command, log_name="uvicorn.log", port=port, env=env):
        url = f"http://127.0.0.1:{port}"
        refused = httpx.post(f"{url}/chat", json={"text": "hi", "customer": "acme"}, timeout=30)
        assert refused.status_code == 429, refused.text
        assert refused.json() == {"detail": ["daily budget reached"]}
        assert llm_stub.calls == []
        served = httpx.post(f"{url}/chat", json={"text": "hi", "customer": "globex"}, timeout=30)
        assert served.status_code == 200, served.text
    (response_id,) = llm_stub.response_ids
    assert example.events([response_id])[response_id]["customer_key"] == "globex"
