"""Anonymised values leave no trace: not in Redis, dead letters, logs, Flower's
events or the server's ledger; the digests arrive and stay groupable.

Real parts: the test Redis, a real worker process (events on, payloads shown to
Flower), a real ``aicm-tasks serve`` and a Redis pub/sub listener standing in
for Flower (it sees every event the worker sends, as Flower would).
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
from pathlib import Path

import pytest
import redis
from pydantic import SecretStr

from aicm_tasks import create_app
from aicm_tasks.broker.dead_letters import Selection
from aicm_tasks.devtools.processes import wait_until
from aicm_tasks.producer.anonymize import DIGEST_PREFIX
from aicm_tasks.settings import Settings
from tests.reliability.test_security import every_value
from tests.support.pipeline import Pipeline
from tests.support.tasks import track_of

pytestmark = pytest.mark.integration


def kombu_body(data: bytes) -> bytes:
    """The body of a kombu message on Redis, which travels base64-encoded: a scan
    of the raw bytes alone would find no payload, secret or not."""
    try:
        envelope = json.loads(data)
        body = envelope["body"]
        if envelope.get("properties", {}).get("body_encoding") == "base64":
            return base64.b64decode(body)
        return str(body).encode()
    except (ValueError, KeyError, TypeError):
        return b""


class EventListener:
    """Every pub/sub message on the test Redis while it runs (Celery events
    travel by PUBLISH on a Redis broker: what Flower would receive)."""

    def __init__(self, url: str) -> None:
        self.pubsub = redis.Redis.from_url(url).pubsub(ignore_subscribe_messages=True)
        self.pubsub.psubscribe("*")
        self.seen: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            message = self.pubsub.get_message(timeout=0.2)
            if message and isinstance(message.get("data"), bytes):
                self.seen.append(message["data"] + b"\n" + kombu_body(message["data"]))

    def stop(self) -> bytes:
        self._stop.set()
        self._thread.join(5)
        self.pubsub.close()
        return b"\n".join(self.seen)


def test_anonymised_values_appear_nowhere_but_their_digests_arrive(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    email, prompt, name = (f"{what}-{secrets.token_hex(8)}" for what in ("email", "prompt", "name"))
    settings = Settings(
        broker_url=pipeline.settings.broker_url,
        queue=pipeline.settings.queue,
        key_prefix=pipeline.settings.key_prefix,
        anonymize_fields=("email", "prompt"),
        anonymize_key=SecretStr(secrets.token_hex(32)),
    )
    track = track_of(create_app(settings))
    listener = EventListener(settings.broker_url)
    # Not anonymised: found in every place scanned, which proves each scan reads
    # the values (kombu's base64 bodies, the ledger's pages) and can fail.
    control = f"control-{secrets.token_hex(8)}"
    usage = {"input_tokens": 3, "output_tokens": 1, "prompt": prompt, "route": control}
    for n in range(10):
        track.delay("openai::gpt-4o-mini", usage, response_id=f"ok{n}", context={"email": email})
    # Refused by the server: dead-lettered with the record's body kept.
    for n in range(5):
        track.delay("acme::unknown", usage, response_id=f"dead{n}", context={"email": email})
    track.many(
        [{"service_key": "openai::gpt-4o-mini", "usage": {"input_tokens": 1, "name": name}}],
        anonymize_fields=["name"],
    )
    # Still waiting in Redis when it is scanned.
    track.apply_async(("openai::gpt-4o-mini", usage), countdown=3600)

    pipeline.start_worker(AICM_EVENTS_SHOW_PAYLOADS="true")
    pipeline.wait_settled(16)
    assert pipeline.dead_letters.count() == 5
    wait_until(lambda: b"ok9" in b"".join(listener.seen), 30, "the worker's events")
    events = listener.stop()

    delivered = {
        e["response_id"]: e for e in pipeline.server.get("/api/v1/usage/events?limit=100")["events"]
    }
    digests = {delivered[f"ok{n}"]["context"]["email"] for n in range(10)}
    assert len(digests) == 1 and digests.pop().startswith(DIGEST_PREFIX)
    assert delivered["ok0"]["payload"]["prompt"].startswith(DIGEST_PREFIX)

    ledger = b"".join(p.read_bytes() for p in tmp_path.glob("events.sqlite3*"))
    dead = str(pipeline.dead_letters.list(Selection(all=True)))
    everything = every_value(pipeline.client)
    assert control.encode() in everything and control in dead
    assert control.encode() in events and control.encode() in ledger
    for secret in (email, prompt, name):
        assert secret.encode() not in everything, secret
        assert secret not in dead and secret not in pipeline.logs()
        assert secret.encode() not in events and secret.encode() not in ledger
