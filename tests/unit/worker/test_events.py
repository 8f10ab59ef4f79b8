"""Task events for Flower: the two events sent per settled batch, their fields,
and what a task shows of its records (never the payloads unless asked, never a key).

The dispatcher is Celery's boundary: a recording stand-in takes its place, so
the test sees each ``send`` exactly as kombu would be asked to publish it.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from celery import Celery

from aicm_tasks.broker.messages import decode
from aicm_tasks.producer.record import build_record
from aicm_tasks.worker import events as events_module
from aicm_tasks.worker.delivery import Summary
from aicm_tasks.worker.events import SHOWN, TASK_NAME, TaskEvents, describe
from aicm_tasks.worker.observe import BatchReport


class RecordingDispatcher:
    """Stands in for ``app.events.Dispatcher``: keeps what it was asked to send."""

    def __init__(self, fail: bool = False) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []
        self.fail = fail
        self.closed = False

    def send(self, type_: str, **fields: Any) -> None:
        if self.fail:
            raise ConnectionError("broker gone")
        self.sent.append((type_, fields))

    def close(self) -> None:
        self.closed = True

    @property
    def connection(self) -> Any:
        return self


def items(count: int, **fields: Any) -> list[Any]:
    records = [
        build_record(
            "openai::gpt-4o" if n % 3 else "anthropic::claude-3-haiku",
            {"input_tokens": 1000 + n, "output_tokens": 7},
            response_id=f"resp-{n}",
            customer_key=f"cust-{n % 2}",
            context={"prompt_name": f"secret-prompt-{n}"},
            **fields,
        )
        for n in range(count)
    ]
    return [decode(r.message) for r in records]


def report(count: int = 3, **fields: Any) -> BatchReport:
    summary = Summary(delivered=count - 1, retried=1, dead_lettered={"error": 0}, requests=2)
    return BatchReport("aicm:batch:w:1", summary, 0.25, items(count, **fields))


@pytest.fixture
def app() -> Celery:
    return Celery("test-events", broker="memory://", set_as_current=False)


def observer(app: Celery, dispatcher: RecordingDispatcher, **options: Any) -> TaskEvents:
    events = TaskEvents(app, "worker1@host", **options)
    events._dispatcher = dispatcher  # the dispatcher is made on first use; this is it
    return events


def test_a_settled_batch_is_sent_as_one_received_and_one_succeeded_task(app: Celery) -> None:
    dispatcher = RecordingDispatcher()
    observer(app, dispatcher).batch_settled(report(3))
    (received_type, received), (succeeded_type, succeeded) = dispatcher.sent
    assert (received_type, succeeded_type) == ("task-received", "task-succeeded")
    assert received["name"] == TASK_NAME == "aicm_tasks.deliver_batch"
    assert received["uuid"] == succeeded["uuid"] == received["root_id"]
    assert received["args"] == "()"
    assert received["retries"] == 0 and received["eta"] is None and received["parent_id"] is None
    assert json.loads(succeeded["result"]) == {
        "delivered": 2,
        "retried": 1,
        "dead_lettered": {"error": 0},
        "requests": 2,
    }
    assert succeeded["runtime"] == 0.25
    assert succeeded["timestamp"] - received["timestamp"] == pytest.approx(0.25)


def test_each_batch_is_its_own_task(app: Celery) -> None:
    dispatcher = RecordingDispatcher()
    events = observer(app, dispatcher)
    events.batch_settled(report(1))
    events.batch_settled(report(1))
    ids = {fields["uuid"] for _, fields in dispatcher.sent}
    assert len(ids) == 2


def test_a_task_shows_counts_ids_and_customers_but_no_payload_by_default(app: Celery) -> None:
    dispatcher = RecordingDispatcher()
    observer(app, dispatcher).batch_settled(report(3))
    shown = json.loads(dispatcher.sent[0][1]["kwargs"])
    assert shown == {
        "records": 3,
        "service_keys": {"anthropic::claude-3-haiku": 1, "openai::gpt-4o": 2},
        "response_ids": ["resp-0", "resp-1", "resp-2"],
        "customer_keys": ["cust-0", "cust-1"],
    }
    everything = json.dumps(dispatcher.sent)
    assert "input_tokens" not in everything
    assert "secret-prompt" not in everything


def test_payloads_and_context_are_shown_only_when_asked(app: Celery) -> None:
    dispatcher = RecordingDispatcher()
    observer(app, dispatcher, show_payloads=True).batch_settled(report(2))
    shown = json.loads(dispatcher.sent[0][1]["kwargs"])
    assert shown["payloads"] == [
        {"payload": {"input_tokens": 1000, "output_tokens": 7}, "context": {"prompt_name": "secret-prompt-0"}},
        {"payload": {"input_tokens": 1001, "output_tokens": 7}, "context": {"prompt_name": "secret-prompt-1"}},
    ]  # fmt: skip


def test_a_record_sent_with_an_alias_is_shown_as_one_without(app: Celery) -> None:
    # The alias travels in the message's metadata, beside the key's name in the
    # worker: none of it is shown, so the two batches look the same.
    plain, aliased = RecordingDispatcher(), RecordingDispatcher()
    observer(app, plain, show_payloads=True).batch_settled(report(2))
    observer(app, aliased, show_payloads=True).batch_settled(report(2, api_key_alias="team-a"))
    assert aliased.sent[0][1]["kwargs"] == plain.sent[0][1]["kwargs"]
    assert "team-a" not in json.dumps(aliased.sent)


def test_a_large_batch_shows_at_most_the_first_records(app: Celery) -> None:
    shown = describe(items(SHOWN * 3), show_payloads=True)
    assert shown["records"] == SHOWN * 3
    assert shown["response_ids"] == [f"resp-{n}" for n in range(SHOWN)]
    assert len(shown["payloads"]) == SHOWN
    assert sum(shown["service_keys"].values()) == SHOWN * 3


def test_a_failed_send_drops_the_dispatcher_so_the_next_batch_gets_a_fresh_one(
    app: Celery, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = RecordingDispatcher(fail=True)
    events = observer(app, broken)
    with pytest.raises(ConnectionError):
        events.batch_settled(report(1))
    assert broken.closed
    fresh = RecordingDispatcher()
    monkeypatch.setattr(app.events, "Dispatcher", lambda connection, **options: fresh)
    monkeypatch.setattr(events_module, "_reuse_redis_client", lambda dispatcher: None)
    events.batch_settled(report(1))
    assert [type_ for type_, _ in fresh.sent] == ["task-received", "task-succeeded"]


def test_close_closes_the_dispatcher_once(app: Celery) -> None:
    dispatcher = RecordingDispatcher()
    events = observer(app, dispatcher)
    events.close()
    events.close()
    assert dispatcher.closed
    assert events._dispatcher is None


def test_the_private_channel_reuses_one_redis_client_for_publishing() -> None:
    made: list[bool] = []

    class Channel:
        def _create_client(self, asynchronous: bool = False) -> object:
            made.append(asynchronous)
            return object()

    channel = Channel()
    dispatcher = type("D", (), {"producer": type("P", (), {"channel": channel})()})()
    events_module._reuse_redis_client(dispatcher)
    first = channel._create_client()
    assert channel._create_client() is first
    assert channel._create_client(asynchronous=True) is not first
    assert made == [False, True]
