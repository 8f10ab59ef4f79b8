"""Several API keys: records tagged with an alias are delivered with that alias's key."""

from __future__ import annotations

import json
from typing import Any

import pytest

from aicm_tasks.broker.dead_letters import Selection
from aicm_tasks.devtools.processes import stop_process
from tests.support.cli import run_cli
from tests.support.faults import FaultProxy
from tests.support.pipeline import Pipeline, dump

pytestmark = pytest.mark.integration

KEYS = {None: "default-key-0", "team-a": "key-of-team-a-1", "team-b": "key-of-team-b-2"}
LATE_KEY = "key-of-team-c-3"


def test_each_alias_is_sent_with_its_own_key_and_an_unknown_one_waits_in_the_dlq(
    pipeline_factory,
) -> None:
    probe = pipeline_factory()
    with FaultProxy(probe.server.url) as proxy:
        proxy.state.accept_keys = {*KEYS.values(), LATE_KEY}
        proxy.state.upstream_key = probe.server.api_key
        pipeline: Pipeline = pipeline_factory(api_base=proxy.url)
        aliases = {"team-a": KEYS["team-a"], "team-b": KEYS["team-b"]}
        worker_env: dict[str, Any] = {
            "AICM_API_KEY": KEYS[None],
            "AICM_API_KEYS": json.dumps(aliases),
        }
        expected: dict[str, str | None] = {}
        # Interleaved, so that every batch would mix aliases if it could.
        for n in range(1200):
            alias = [None, "team-a", "team-b", "team-c"][n % 4]
            result = pipeline.track.delay(
                "openai::gpt-4o-mini",
                {"input_tokens": n},
                response_id=f"r{n}",
                api_key_alias=alias,
            )
            expected[result.id] = alias
        worker = pipeline.start_worker(**worker_env)
        pipeline.wait_settled(1200)

        sent_with: dict[str, str] = {}
        for key, ids in proxy.state.requests_by_key:
            assert len({expected[i] for i in ids}) == 1, "a request mixed aliases"
            sent_with.update(dict.fromkeys(ids, key))
        for response_id, alias in expected.items():
            if alias == "team-c":
                assert response_id not in sent_with
            else:
                assert sent_with[response_id] == KEYS[alias]

        late = {i for i, alias in expected.items() if alias == "team-c"}
        dead = pipeline.dead_letters.list(Selection(all=True))
        assert {e["id"] for e in dead} == late, dump(dead)
        assert {e["reason"] for e in dead} == {"unknown_api_key_alias"}
        assert {e["api_key_alias"] for e in dead} == {"team-c"}
        assert "'team-c'" in dead[0]["detail"]

        # Nothing in Redis or the worker's log holds a key.
        _assert_no_key_in_redis(pipeline, [*KEYS.values(), LATE_KEY])
        assert not any(key in pipeline.logs() for key in [*KEYS.values(), LATE_KEY])

        # The operator configures team-c, then replays: delivered with team-c's key.
        stop_process(worker)
        aliases["team-c"] = LATE_KEY
        pipeline.start_worker(**{**worker_env, "AICM_API_KEYS": json.dumps(aliases)})
        replay = run_cli(
            "dlq", "replay", "--reason", "unknown_api_key_alias", "--json", env=pipeline.cli_env()
        )
        assert replay.returncode == 0, replay.stderr
        pipeline.wait_settled(1200 + len(late))
        pipeline.wait_drained()

    assert pipeline.dead_letters.count() == 0
    assert pipeline.server.response_ids() == set(expected)
    late_requests = [ids for key, ids in proxy.state.requests_by_key if key == LATE_KEY]
    assert {i for ids in late_requests for i in ids} == late


def test_a_worker_without_a_default_key_delivers_aliases_and_dead_letters_the_rest(
    pipeline_factory,
) -> None:
    probe = pipeline_factory()
    with FaultProxy(probe.server.url) as proxy:
        proxy.state.accept_keys = {KEYS["team-a"]}
        proxy.state.upstream_key = probe.server.api_key
        pipeline: Pipeline = pipeline_factory(api_base=proxy.url)
        tagged = [
            pipeline.track.delay(
                "openai::gpt-4o-mini", {"input_tokens": n}, api_key_alias="team-a"
            ).id
            for n in range(20)
        ]
        untagged = [
            pipeline.track.delay("openai::gpt-4o-mini", {"input_tokens": n}).id for n in range(5)
        ]
        # An empty AICM_API_KEY counts as unset: this worker has aliases only.
        pipeline.start_worker(AICM_API_KEY="", AICM_API_KEYS=json.dumps({"team-a": KEYS["team-a"]}))
        pipeline.wait_settled(25)
    assert pipeline.server.response_ids() == set(tagged)
    dead = {e["id"]: e for e in pipeline.dead_letters.list(Selection(all=True))}
    assert set(dead) == set(untagged)
    assert all("no default API key" in e["detail"] for e in dead.values())


def _assert_no_key_in_redis(pipeline: Pipeline, keys: list[str]) -> None:
    # bytes: redis-py types a reply as bytes | str, whatever decode_responses says.
    values: list[Any] = []
    for name in pipeline.client.scan_iter(count=1000):
        kind = pipeline.client.type(name)
        if kind == b"list":
            values += pipeline.client.lrange(name, 0, -1)
        elif kind == b"hash":
            values += list(pipeline.client.hgetall(name).values())
        elif kind == b"zset":
            values += pipeline.client.zrange(name, 0, -1)
        elif kind == b"string":
            values.append(pipeline.client.get(name) or b"")
    blob = b"\n".join(values)
    for key in keys:
        assert key.encode() not in blob
