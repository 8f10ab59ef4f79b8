"""No secret in broker messages, logs, the dead-letter store or CLI output."""

from __future__ import annotations

import os
from typing import Any

import redis

from aicm_tasks.broker.dead_letters import Selection
from aicm_tasks.devtools.processes import free_port
from tests.support.cli import run_cli
from tests.support.pipeline import Pipeline, publish


def every_value(client: redis.Redis) -> bytes:
    """Every key name and value in the Redis db, concatenated."""
    # bytes: redis-py types a reply as bytes | str, whatever decode_responses says.
    chunks: list[Any] = []
    for key in client.scan_iter(count=1000):
        chunks.append(key)
        kind = client.type(key)
        if kind == b"string":
            chunks.append(client.get(key) or b"")
        elif kind == b"list":
            chunks.extend(client.lrange(key, 0, -1))
        elif kind == b"hash":
            for field, value in client.hgetall(key).items():
                chunks += [field, value]
        elif kind == b"set":
            chunks.extend(client.smembers(key))
        elif kind == b"zset":
            chunks.extend(client.zrange(key, 0, -1))
    return b"\n".join(chunks)


def test_the_api_key_appears_nowhere_after_a_run(pipeline: Pipeline) -> None:
    key = pipeline.server.api_key
    publish(pipeline, 200)
    publish(pipeline, 20, service="acme::unknown", prefix="dead")
    # Pending work too: a record scheduled for later stays in Redis during the scan.
    pipeline.track.apply_async(("openai::gpt-4o-mini", {"input_tokens": 1}), countdown=3600)
    pipeline.start_worker()
    pipeline.wait_settled(220)
    assert pipeline.dead_letters.count() == 20

    assert key.encode() not in every_value(pipeline.client)
    assert key not in pipeline.logs()
    env = {**pipeline.cli_env(), "AICM_API_KEY": key}
    for args in (
        ["dlq", "list", "--json"],
        ["dlq", "export"],
        ["dlq", "stats"],
        ["dlq", "show", "dead0"],
        ["spool", "status"],
    ):
        result = run_cli(*args, env=env)
        assert result.returncode == 0, result.stderr
        assert key not in result.stdout + result.stderr, args
    assert all(key not in str(entry) for entry in pipeline.dead_letters.list(Selection(all=True)))


def test_broker_passwords_are_not_printed_in_errors() -> None:
    url = f"redis://:hunter2-secret@127.0.0.1:{free_port()}/0"
    env = {**os.environ, "AICM_BROKER_URL": url}
    result = run_cli("dlq", "stats", env=env)
    assert result.returncode != 0
    assert "hunter2-secret" not in result.stdout + result.stderr
