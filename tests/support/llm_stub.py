"""A tiny OpenAI-compatible HTTP stub on 127.0.0.1 for the examples' tests.

``POST /v1/chat/completions`` answers with a recorded chat completion
(``tests/fixtures/examples/openai_chat_completion.json``) under a fresh ``id``
per call, so a test can tell which LLM responses an example received and look
for exactly those ``response_id``s at the /track server. No network: the real
``openai`` package is pointed at it through ``OPENAI_BASE_URL``.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

#: The one folder of test data (recorded answers): tests/fixtures.
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
#: A chat completion as the OpenAI API returned it.
RECORDED_COMPLETION: dict[str, Any] = json.loads(
    (FIXTURES / "examples" / "openai_chat_completion.json").read_text()
)


@dataclass
class LLMStub:
    """The running stub: where it listens and what it was asked."""

    base_url: str
    api_key: str = "sk-test-not-a-real-key"
    #: One entry per completion served: ``(response id, request body)``.
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def response_ids(self) -> list[str]:
        with self._lock:
            return [response_id for response_id, _ in self.calls]

    def env(self) -> dict[str, str]:
        """What a process needs for ``OpenAI()`` to call this stub."""
        return {"OPENAI_BASE_URL": self.base_url, "OPENAI_API_KEY": self.api_key}

    def complete(self, request: dict[str, Any]) -> dict[str, Any]:
        response_id = f"chatcmpl-{uuid.uuid4().hex}"
        with self._lock:
            self.calls.append((response_id, request))
        return {**RECORDED_COMPLETION, "id": response_id}


def _handler(stub: LLMStub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if self.path.rstrip("/") != "/v1/chat/completions":
                self._send(404, {"error": {"message": f"no route {self.path}"}})
            elif self.headers.get("Authorization") != f"Bearer {stub.api_key}":
                self._send(401, {"error": {"message": "bad key"}})
            else:
                self._send(200, stub.complete(json.loads(body)))

        def _send(self, status: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # quiet: pytest shows the test's own output

    return Handler


@pytest.fixture
def llm_stub() -> Iterator[LLMStub]:
    stub = LLMStub(base_url="")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(stub))
    stub.base_url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield stub
    server.shutdown()
    server.server_close()
