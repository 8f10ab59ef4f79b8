"""API-key aliases: validated at the call site, carried in the message's metadata
line, kept through retries, spooling and replays, and never mixed in a request."""

from __future__ import annotations

import json
from pathlib import Path
from typing import cast

import pydantic
import pydantic_settings
import pytest
import redis

from aicm_tasks.broker.dead_letters import DeadLetterStore, Selection
from aicm_tasks.broker.keys import Keys
from aicm_tasks.broker.messages import decode
from aicm_tasks.broker.records import RecordStore
from aicm_tasks.errors import RecordTypeError, RecordValueError
from aicm_tasks.producer.record import build_record
from aicm_tasks.producer.spool import Spool
from aicm_tasks.settings import Settings
from aicm_tasks.worker.delivery import plan
from aicm_tasks.worker.outcomes import BatchVerdict, Fate, Reason, RecordResult, VerdictKind
from aicm_tasks.worker.retry import BackoffPolicy
from tests.support.delivery import deliver
from tests.support.spool_sink import Sink
from tests.support.tasks import track_of


def message(rid: str, alias: str | None) -> bytes:
    return build_record("openai::gpt-4o", {"n": 1}, response_id=rid, api_key_alias=alias).message


def recording_post(name: str, calls: list[tuple[str, list[str]]]):
    def post(body: bytes) -> BatchVerdict:
        ids = [r["response_id"] for r in json.loads(body)["tracked"]]
        calls.append((name, ids))
        results = {rid: RecordResult("queued") for rid in ids}
        return BatchVerdict(VerdictKind.RESULTS, "200", 200, results=results)

    return post


@pytest.mark.parametrize(
    ("alias", "error"),
    [
        (5, RecordTypeError),
        ("", RecordValueError),
        ("team a", RecordValueError),
        ("-team", RecordValueError),
        ("x" * 65, RecordValueError),
        ("sk-proj/abc+def=", RecordValueError),
    ],
)
def test_a_bad_alias_is_refused_at_the_call_site(alias: object, error: type) -> None:
    with pytest.raises(error, match="api_key_alias"):
        build_record("openai::gpt-4o", {}, api_key_alias=alias)


def test_the_alias_rides_in_the_metadata_line_and_the_record_is_untouched() -> None:
    record = build_record("openai::gpt-4o", {"n": 1}, response_id="r1", api_key_alias="team-a")
    assert record.message == b'{"api_key_alias":"team-a"}\n' + record.body
    assert b"team-a" not in record.body
    item = decode(record.message)
    assert (item.response_id, item.service_key, item.body) == ("r1", "openai::gpt-4o", record.body)
    assert item.api_key_alias == "team-a" and item.malformed is None
    plain = build_record("openai::gpt-4o", {"n": 1}, response_id="r2")
    assert plain.message == plain.body and decode(plain.message).api_key_alias is None


def test_requests_never_mix_aliases_and_an_unknown_alias_is_never_sent() -> None:
    aliases = [None, "team-a", "team-b", "nobody"]
    items = [decode(message(f"r{n}", aliases[n % 4])) for n in range(40)]
    calls: list[tuple[str, list[str]]] = []
    outcomes, requests = deliver(
        items,
        recording_post("default", calls),
        {"team-a": recording_post("team-a", calls), "team-b": recording_post("team-b", calls)},
    )
    assert requests == 3 and len(outcomes) == 40
    by_key = {name: set(ids) for name, ids in calls}
    assert by_key == {
        "default": {f"r{n}" for n in range(0, 40, 4)},
        "team-a": {f"r{n}" for n in range(1, 40, 4)},
        "team-b": {f"r{n}" for n in range(2, 40, 4)},
    }
    unknown = [o for o in outcomes if o.fate is Fate.DEAD_LETTER]
    assert {o.item.response_id for o in unknown} == {f"r{n}" for n in range(3, 40, 4)}
    assert {o.reason for o in unknown} == {Reason.UNKNOWN_API_KEY_ALIAS}
    assert all(not o.sent and "'nobody'" in o.detail for o in unknown)


def test_without_a_default_key_untagged_records_are_dead_lettered_unsent() -> None:
    calls: list[tuple[str, list[str]]] = []
    items = [decode(message("a", "team-a")), decode(message("b", None))]
    outcomes, _ = deliver(items, None, {"team-a": recording_post("team-a", calls)})
    assert calls == [("team-a", ["a"])]
    (dead,) = [o for o in outcomes if o.fate is Fate.DEAD_LETTER]
    assert dead.item.response_id == "b" and "no default API key" in dead.detail


def test_a_non_string_alias_in_metadata_is_never_sent_with_the_default_key() -> None:
    body = build_record("openai::gpt-4o", {}, response_id="odd").body
    item = decode(b'{"api_key_alias":7}\n' + body)
    calls: list[tuple[str, list[str]]] = []
    outcomes, _ = deliver([item], recording_post("default", calls))
    assert calls == [] and outcomes[0].reason is Reason.UNKNOWN_API_KEY_ALIAS


def test_the_alias_survives_a_retry_and_a_dead_letter_replay(any_redis: redis.Redis) -> None:
    keys = Keys("aicm.tracking", "aicm")
    store = RecordStore(any_redis, keys)
    store.push(message("r1", "team-a"))
    fetched = store.fetch("c", keys.batch("c", 1), 10, 30)
    assert fetched is not None
    items = [decode(m) for m in fetched]
    transient = BatchVerdict(VerdictKind.TRANSIENT, "HTTP 503", 503)
    outcomes, _ = deliver(items, None, {"team-a": lambda body: transient})
    resolution, _ = plan(outcomes, BackoffPolicy(max_retries=0), auth_retry_interval_s=1)
    assert store.resolve("c", keys.batch("c", 1), resolution)
    dlq = DeadLetterStore(any_redis, keys)
    (entry,) = dlq.list(Selection(all=True))
    assert entry["reason"] == "retries_exhausted" and entry["api_key_alias"] == "team-a"
    assert dlq.replay(Selection(all=True)) == ["r1"]
    fetched = store.fetch("c", keys.batch("c", 2), 10, 30)
    assert fetched is not None
    (replayed,) = fetched
    item = decode(replayed)
    assert item.api_key_alias == "team-a" and item.response_id == "r1"


def test_a_spooled_aliased_message_comes_back_byte_identical(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=10**6)
    messages = [message(f"r{n}", "team-a" if n % 2 else None) for n in range(10)]
    for m in messages:
        spool.append(m)
    assert spool.status().records == 10
    sink = Sink()
    spool.drain(sink)
    assert sink.pushed == messages


def test_workers_read_keys_by_alias_from_aicm_api_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AICM_API_KEYS", '{"team-a": "secret-a", "team.b_2": "secret-b"}')
    settings = Settings()
    assert {a: k.get_secret_value() for a, k in settings.api_keys.items()} == {
        "team-a": "secret-a",
        "team.b_2": "secret-b",
    }
    assert "secret-a" not in repr(settings)
    monkeypatch.setenv("AICM_API_KEYS", '{"team a": "secret-a"}')
    with pytest.raises(pydantic.ValidationError) as refused:
        Settings()
    assert "secret-a" not in str(refused.value) and "'team a'" in str(refused.value)
    monkeypatch.setenv("AICM_API_KEYS", "secret-a")
    with pytest.raises(pydantic_settings.SettingsError) as unreadable:
        Settings()
    assert "secret-a" not in str(unreadable.value)


def test_sdk_paths_tag_records_with_the_alias(real_redis: redis.Redis) -> None:
    from aicostmanager import Tracker

    from aicm_tasks import CeleryDelivery, track_llm_stream_usage, track_llm_usage
    from aicm_tasks.app import create_app
    from tests.conftest import TEST_REDIS_URL
    from tests.support.llm import CHAT, RecordedVendor

    app = create_app(Settings(broker_url=TEST_REDIS_URL, queue="alias.q"))
    task = track_of(app)
    vendor = RecordedVendor()
    with pytest.raises(RecordValueError):
        CeleryDelivery(task, api_key_alias="not an alias")
    tracker = Tracker(
        aicm_api_key="sdk-key-never-sent", delivery=CeleryDelivery(task, api_key_alias="team-a")
    )
    tracker.track("openai::gpt-4o-mini", {"input_tokens": 1}, response_id="via-tracker")
    completion = vendor.openai().chat.completions.create(**CHAT)
    track_llm_usage("openai_chat", completion, task=task, api_key_alias="team-b")
    stream = vendor.openai().chat.completions.create(
        **CHAT, stream=True, stream_options={"include_usage": True}
    )
    list(track_llm_stream_usage("openai_chat", stream, task=task, api_key_alias="team-c"))
    # bytes: redis-py types a reply as bytes | str, whatever decode_responses says.
    queued = cast(list[bytes], real_redis.lrange("alias.q", 0, -1))
    items = [decode(m) for m in reversed(queued)]
    assert [(i.api_key_alias, i.malformed) for i in items] == [
        ("team-a", None),
        ("team-b", None),
        ("team-c", None),
    ]
    assert items[0].response_id == "via-tracker" and items[1].response_id == completion.id
    assert not any(b"sdk-key-never-sent" in m for m in real_redis.lrange("alias.q", 0, -1))
