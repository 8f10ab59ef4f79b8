"""The webhook notifier against a real receiver on 127.0.0.1: retries, give-ups, signatures."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from aicm_tasks.devtools.processes import wait_until
from aicm_tasks.server.limit_store import LimitStore
from aicm_tasks.server.webhooks import (
    SIGNATURE_HEADER,
    WebhookNotifier,
    gives_up,
    signature,
)


class Receiver:
    """Answers the statuses of ``script`` in turn, then 200; records what it got."""

    def __init__(self, script: list[int]) -> None:
        self.script = list(script)
        self.got: list[tuple[int, bytes, str]] = []
        self.lock = threading.Lock()


@pytest.fixture
def serve_receiver() -> Iterator[Any]:
    servers: list[ThreadingHTTPServer] = []

    def start(script: list[int]) -> tuple[Receiver, str]:
        receiver = Receiver(script)

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver.lock:
                    status = receiver.script.pop(0) if receiver.script else 200
                    receiver.got.append((status, body, self.headers.get(SIGNATURE_HEADER, "")))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return receiver, f"http://127.0.0.1:{server.server_address[1]}/hook"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def endpoint(store: LimitStore, uuid: str, url: str, *, active: bool = True) -> None:
    store.put_webhook((uuid, url, f"secret-{uuid}", int(active), 300, 0.0, 0.0))


@pytest.mark.parametrize(
    ("status", "ends"),
    [(200, True), (204, True), (301, True), (400, True), (404, True), (408, False),
     (429, False), (500, False), (503, False)],
)  # fmt: skip
def test_which_answers_end_a_delivery(status: int, ends: bool) -> None:
    assert gives_up(status) is ends


def test_a_failing_endpoint_is_retried_with_backoff_then_given_up(
    serve_receiver: Any, tmp_path: Path
) -> None:
    store = LimitStore(str(tmp_path / "l.sqlite3"))
    flaky, flaky_url = serve_receiver([500, 503])
    broken, broken_url = serve_receiver([500] * 10)
    refusing, refusing_url = serve_receiver([410])
    endpoint(store, "flaky", flaky_url)
    endpoint(store, "broken", broken_url)
    endpoint(store, "refusing", refusing_url)
    endpoint(store, "off", refusing_url, active=False)
    notifier = WebhookNotifier(store, max_attempts=4, backoff_s=0.01)
    try:
        notifier.notify({"event_id": "ev-1", "limit_id": "l1"})
        wait_until(lambda: len(broken.got) == 4 and notifier.pending() == 0, 30, "the give-up")
    finally:
        notifier.stop()
    assert [status for status, _, _ in flaky.got] == [500, 503, 200]
    assert [status for status, _, _ in refusing.got] == [410]  # refused: not retried, not 'off'
    assert len(broken.got) == 4  # bounded
    _, body, header = flaky.got[-1]
    event = json.loads(body)
    assert event["id"] == "ev-1" and event["data"] == {"event_id": "ev-1", "limit_id": "l1"}
    sent_at = int(header.split(",")[0].removeprefix("t="))
    assert header == signature("secret-flaky", sent_at, body)
    store.close()


def test_an_endpoint_deleted_before_its_retry_gets_nothing_more(
    serve_receiver: Any, tmp_path: Path
) -> None:
    store = LimitStore(str(tmp_path / "l.sqlite3"))
    receiver, url = serve_receiver([500] * 10)
    endpoint(store, "gone", url)
    notifier = WebhookNotifier(store, max_attempts=5, backoff_s=0.2)
    try:
        notifier.notify({"event_id": "ev-2"})
        wait_until(lambda: receiver.got, 30, "the first attempt")
        store.delete_webhook("gone")
        wait_until(lambda: notifier.pending() == 0, 30, "the retries to drain")
    finally:
        notifier.stop()
    assert len(receiver.got) == 1
    store.close()
