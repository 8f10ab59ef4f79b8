"""Every ``aicm-tasks dlq`` verb on RabbitMQ, as a real CLI subprocess.

The dead-letter stream is seeded with ``dead`` events whose entries a worker's
own planning built (:func:`aicm_tasks.worker.delivery.plan`, the same JSON as
on Redis); each test has its own queue in the session's vhost.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from aicm_tasks.broker.dead_letters import selection_of
from aicm_tasks.broker.messages import decode
from aicm_tasks.broker.rabbitmq.connection import close_quietly, open_connection
from aicm_tasks.broker.rabbitmq.dead_letters import RabbitDeadLetterStore
from aicm_tasks.broker.rabbitmq.events import dead_event
from aicm_tasks.broker.rabbitmq.names import RabbitNames
from aicm_tasks.broker.rabbitmq.streams import StreamReader
from aicm_tasks.broker.rabbitmq.topology import declare_topology
from aicm_tasks.producer.record import build_record
from aicm_tasks.worker.delivery import plan
from aicm_tasks.worker.outcomes import BatchVerdict, RecordResult, VerdictKind
from aicm_tasks.worker.retry import BackoffPolicy
from tests.support.cli import run_cli
from tests.support.delivery import deliver
from tests.support.rabbitmq_messages import publish_all, queue_counts
from tests.support.rabbitmq_topology import RabbitTopologies

pytestmark = pytest.mark.integration

LONG_A = "5b0e11aa" + "a" * 40 + "-first"
LONG_B = "5b0e22bb" + "b" * 40 + "-second"


def dead_letter_entries(failures: list[tuple[str, str, str]]) -> list[tuple[str, str]]:
    """``(id, entry_json)`` as a worker plans them for records /track refused:
    ``failures`` are ``(response_id, status, service_key)``."""
    items = [
        decode(build_record(service, {"input_tokens": 3}, response_id=rid).message)
        for rid, _, service in failures
    ]
    verdict = BatchVerdict(
        VerdictKind.RESULTS,
        "200",
        200,
        results={rid: RecordResult(status, ("nope",)) for rid, status, _ in failures},
    )
    resolution, _ = plan(
        deliver(items, lambda body: verdict)[0], BackoffPolicy(), auth_retry_interval_s=1
    )
    return list(resolution.dead_letters)


def append_events(url: str, stream: str, events: list[bytes]) -> None:
    publish_all(url, stream, events)


@pytest.fixture
def names(rabbit_topologies: RabbitTopologies) -> RabbitNames:
    """A record queue of the test's own (the session's shared delay levels), deleted after."""
    return rabbit_topologies.new()


@pytest.fixture
def env(rabbitmq_vhost, names: RabbitNames) -> dict[str, str]:
    declare_topology(rabbitmq_vhost.url, names)
    entries = dead_letter_entries(
        [
            ("u1", "service_key_unknown", "acme::x"),
            ("u2", "service_key_unknown", "acme::y"),
            ("e1", "error", "openai::gpt-4o"),
            (LONG_A, "service_key_unknown", "acme::x"),
            (LONG_B, "error", "acme::y"),
        ]
    )
    now = time.time()
    append_events(
        rabbitmq_vhost.url,
        names.dead_letters,
        [dead_event(rid, entry, now + n) for n, (rid, entry) in enumerate(entries)],
    )
    return {"AICM_BROKER_URL": rabbitmq_vhost.url, "AICM_QUEUE": names.queue}


def dlq(env: dict[str, str], *args: str) -> Any:
    result = run_cli("dlq", *args, "--json", env=env, timeout_s=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


def test_stats_list_and_show_read_the_folded_stream(env: dict[str, str]) -> None:
    stats = dlq(env, "stats")
    assert stats["total"] == 5
    assert stats["by_reason"] == {"error": 2, "service_key_unknown": 3}
    assert stats["by_service_key"] == {"acme::x": 2, "acme::y": 2, "openai::gpt-4o": 1}
    assert stats["oldest_failure_at"] < stats["newest_failure_at"]
    listed = dlq(env, "list", "--reason", "service_key_unknown", "--service-key", "acme::x")
    assert [e["id"] for e in listed] == ["u1", LONG_A]  # oldest first
    limited = dlq(env, "list", "--limit", "2")
    assert [e["id"] for e in limited] == ["u1", "u2"]
    shown = dlq(env, "show", "e1")
    assert shown["record"]["service_key"] == "openai::gpt-4o" and shown["errors"] == ["nope"]
    assert shown["reason"] == "error" and shown["id"] == "e1"
    assert dlq(env, "show", "5b0e2")["id"] == LONG_B  # a unique prefix


def test_show_refuses_an_ambiguous_or_unknown_prefix(env: dict[str, str]) -> None:
    ambiguous = run_cli("dlq", "show", "5b0e", env=env, timeout_s=60)
    assert ambiguous.returncode == 1 and ambiguous.stdout == ""
    assert ambiguous.stderr.strip() == (
        f"Error: '5b0e' begins 2 dead letter ids ({LONG_A}, {LONG_B}): give more of the id"
    )
    missing = run_cli("dlq", "show", "ffff", env=env, timeout_s=60)
    assert missing.returncode == 1
    assert "no dead letter has an id that is or begins with 'ffff'" in missing.stderr


def test_replay_puts_the_record_back_on_its_queue_and_out_of_the_store(
    env: dict[str, str], rabbitmq_vhost, names: RabbitNames
) -> None:
    dry = dlq(env, "replay", "--service-key", "acme::x", "--dry-run")
    assert dry == {"dry_run": True, "replayed": 2, "ids": ["u1", LONG_A]}
    connection = open_connection(rabbitmq_vhost.url, timeout_s=10)
    try:
        assert queue_counts(connection.channel(), names.queue) == (0, 0)
        done = dlq(env, "replay", "u1", "5b0e1")
        assert done == {"dry_run": False, "replayed": 2, "ids": ["u1", LONG_A]}
        assert queue_counts(connection.channel(), names.queue) == (2, 0)
        channel = connection.channel()
        replayed: list[Any] = [channel.basic_get(names.queue, no_ack=True) for _ in range(2)]
        items = [decode(message.body) for message in replayed]
        assert {item.response_id for item in items} == {"u1", LONG_A}
        assert all(item.meta and item.meta["replays"] == 1 for item in items)
    finally:
        close_quietly(connection)
    assert dlq(env, "stats")["total"] == 3
    ids = {e["id"] for e in dlq(env, "list")}
    assert ids == {"u2", "e1", LONG_B}
    nothing = run_cli("dlq", "replay", env=env, timeout_s=60)
    assert nothing.returncode == 2
    assert "give ids, --reason, --service-key or --all" in nothing.stderr


def test_a_record_dead_lettered_again_after_a_replay_is_listed_again(
    env: dict[str, str], rabbitmq_vhost, names: RabbitNames
) -> None:
    assert dlq(env, "replay", "e1")["ids"] == ["e1"]
    assert "e1" not in {e["id"] for e in dlq(env, "list")}
    ((rid, entry),) = dead_letter_entries([("e1", "error", "openai::gpt-4o")])
    append_events(rabbitmq_vhost.url, names.dead_letters, [dead_event(rid, entry, time.time())])
    listed = dlq(env, "list")
    assert listed[-1]["id"] == "e1"  # the newest failure last
    assert len(listed) == 5


def test_purge_asks_unless_yes_and_settles_the_ids_with_one_event(
    env: dict[str, str], rabbitmq_vhost, names: RabbitNames
) -> None:
    refused = run_cli("dlq", "purge", "--all", env=env, timeout_s=60)
    assert refused.returncode != 0  # no terminal answers the confirmation
    assert dlq(env, "stats")["total"] == 5
    assert dlq(env, "purge", "--reason", "error", "--yes") == {"purged": 2}
    assert dlq(env, "stats")["by_reason"] == {"service_key_unknown": 3}
    assert dlq(env, "purge", "--all", "--yes") == {"purged": 3}
    assert dlq(env, "stats")["total"] == 0
    connection = open_connection(rabbitmq_vhost.url, timeout_s=10)
    try:
        events = [event for _, event in StreamReader(connection, names.dead_letters).to_end()]
    finally:
        close_quietly(connection)
    purged = [e for e in events if e["event"] == "purged"]
    assert [sorted(e["ids"]) for e in purged] == [
        sorted([LONG_B, "e1"]),
        sorted(["u1", "u2", LONG_A]),
    ]


def test_export_writes_json_lines_to_stdout_and_to_a_file(
    env: dict[str, str], tmp_path: Path
) -> None:
    result = run_cli("dlq", "export", env=env, timeout_s=60)
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [e["id"] for e in lines] == ["u1", "u2", "e1", LONG_A, LONG_B]
    assert all(e["record"]["response_id"] == e["id"] for e in lines)
    out = tmp_path / "dead.jsonl"
    summary = dlq(env, "export", "--reason", "error", "--output", str(out))
    assert summary == {"exported": 2, "output": str(out)}
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == ["e1", LONG_B]


def test_a_store_no_worker_declared_is_empty(rabbitmq_vhost) -> None:
    env = {"AICM_BROKER_URL": rabbitmq_vhost.url, "AICM_QUEUE": f"t.{uuid.uuid4().hex}.none"}
    assert dlq(env, "stats")["total"] == 0
    assert dlq(env, "list") == []


def test_a_read_stops_at_its_own_mark_and_sees_every_confirmed_event(
    rabbitmq_vhost, names: RabbitNames
) -> None:
    # More events than one stream credit (PREFETCH = 1000), so the read acks as it goes.
    declare_topology(rabbitmq_vhost.url, names)
    entries = dead_letter_entries([(f"r{n:04d}", "error", "acme::x") for n in range(2500)])
    append_events(
        rabbitmq_vhost.url,
        names.dead_letters,
        [dead_event(rid, entry, time.time()) for rid, entry in entries],
    )
    store = RabbitDeadLetterStore(rabbitmq_vhost.url, names)
    assert store.count() == 2500
    assert store.purge(selection_of(reason="error")) == 2500
    assert RabbitDeadLetterStore(rabbitmq_vhost.url, names).count() == 0


def test_the_broker_password_never_shows(rabbitmq_vhost) -> None:
    url = rabbitmq_vhost.url.replace("guest:guest@", "guest:s3cret-word@")
    env = {"AICM_BROKER_URL": url, "AICM_QUEUE": "t.password.tracking"}
    for command in (("dlq", "stats"), ("dlq", "list"), ("status", "--json")):
        result = run_cli(*command, env=env, timeout_s=60)
        said = result.stdout + result.stderr
        assert result.returncode != 0, said
        assert "s3cret" not in said, said
