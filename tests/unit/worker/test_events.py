"""Task events for Flower: the three events sent per settled batch (received,
started, then succeeded, failed or retried by outcome), their fields, and what a
task shows of its records (never the payloads unless asked, never a key).

The dispatcher is Celery's boundary: a recording stand-in takes its place, so
the test sees each ``send`` exactly as kombu would be asked to publish it. One
test sends over the real Redis to Celery's own receiver and its task state (the
``State`` Flower builds on), so what a batch ends as there is proven too.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest
import redis
from celery import Celery
from hypothesis import given
from hypothesis import strategies as st

from aicm_tasks.broker.messages import decode
from aicm_tasks.devtools.processes import wait_until
from aicm_tasks.producer.record import build_record
from aicm_tasks.worker import events as events_module
from aicm_tasks.worker.delivery import Summary
from aicm_tasks.worker.events import (
    DETAIL_CHARS,
    FAILED,
    RETRIED,
    SHOWN,
    SUCCEEDED,
    TASK_NAME,
    TaskEvents,
    batch_events,
    describe,
    outcome_event,
)
from aicm_tasks.worker.observe import BatchReport
from tests.conftest import TEST_REDIS_URL


class RecordingDispatcher:
    """Stands in for ``app.events.Dispatcher``: keeps what it was asked to send,
    and how many times it was flushed (one message per flush)."""

    def __init__(self, fail: bool = False) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []
        self.flushed: list[int] = []  # how many events had been sent at each flush
        self.fail = fail
        self.closed = False

    def send(self, type_: str, **fields: Any) -> None:
        if self.fail:
            raise ConnectionError("broker gone")
        self.sent.append((type_, fields))

    def flush(self) -> None:
        self.flushed.append(len(self.sent))

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


def report(count: int = 3, summary: Summary | None = None, **fields: Any) -> BatchReport:
    summary = summary or Summary(delivered=count, retried=0, dead_lettered={}, requests=1)
    return BatchReport("aicm:batch:w:1", summary, 0.25, items(count, **fields))


def types(sent: list[tuple[str, dict[str, Any]]]) -> list[str]:
    return [type_ for type_, _ in sent]


@pytest.fixture
def app() -> Celery:
    return Celery("test-events", broker="memory://", set_as_current=False)


def observer(app: Celery, dispatcher: RecordingDispatcher, **options: Any) -> TaskEvents:
    events = TaskEvents(app, "worker1@host", **options)
    events._dispatcher = dispatcher  # the dispatcher is made on first use; this is it
    return events


def test_a_delivered_batch_is_received_started_and_succeeded_in_one_flush(app: Celery) -> None:
    dispatcher = RecordingDispatcher()
    observer(app, dispatcher).batch_settled(report(3))
    (_, received), (_, started), (_, succeeded) = dispatcher.sent
    assert types(dispatcher.sent) == ["task-received", "task-started", "task-succeeded"]
    assert dispatcher.flushed == [3]  # the three go out together, after the last one
    assert received["name"] == TASK_NAME == "aicm_tasks.deliver_batch"
    assert received["uuid"] == started["uuid"] == succeeded["uuid"] == received["root_id"]
    assert received["args"] == "()"
    assert received["retries"] == 0 and received["eta"] is None and received["parent_id"] is None
    assert received["queue"] == "aicm.tracking"  # celery-exporter's queue_name label
    assert json.loads(succeeded["result"]) == {
        "delivered": 3,
        "retried": 0,
        "dead_lettered": {},
        "requests": 1,
    }
    assert "exception" not in succeeded
    assert succeeded["runtime"] == 0.25
    assert started["timestamp"] == received["timestamp"]
    assert succeeded["timestamp"] - started["timestamp"] == pytest.approx(0.25)


@pytest.mark.parametrize(
    ("summary", "last", "exception"),
    [
        (Summary(5, 0, {}, 1), SUCCEEDED, None),
        (Summary(0, 0, {"service_key_unknown": 0}, 1), SUCCEEDED, None),
        (Summary(3, 2, {}, 1, retry_detail="HTTP 503: unavailable"), RETRIED, "RetryScheduled('2 of 5 records scheduled for retry (HTTP 503: unavailable); 3 delivered')"),
        (Summary(0, 5, {}, 1, retry_detail="timeout: ReadTimeout"), RETRIED, "RetryScheduled('5 of 5 records scheduled for retry (timeout: ReadTimeout); 0 delivered')"),
        (Summary(3, 0, {"service_key_unknown": 2}, 1), FAILED, "DeadLettered('2 of 5 records dead-lettered (service_key_unknown: 2); 3 delivered')"),
        (Summary(1, 2, {"rejected": 1, "error": 1}, 3, retry_detail="HTTP 500: boom"), FAILED, "DeadLettered('2 of 5 records dead-lettered (error: 1, rejected: 1); 2 of 5 records scheduled for retry (HTTP 500: boom); 1 delivered')"),
    ],
)  # fmt: skip
def test_the_last_event_is_the_batchs_outcome_with_its_reasons(
    summary: Summary, last: str, exception: str | None
) -> None:
    events = batch_events(report(5, summary), "t1", show_payloads=False)
    assert types(events) == ["task-received", "task-started", last]
    ended = events[-1][1]
    assert ended.get("exception") == exception
    assert json.loads(ended["result"])["delivered"] == summary.delivered
    assert ended["runtime"] == 0.25  # Flower's runtime histogram counts every batch


def test_the_traceback_names_a_few_response_ids_and_what_to_do() -> None:
    summary = Summary(
        0,
        0,
        {"service_key_unknown": 12},
        1,
        dead_lettered_ids=tuple(f"unk{n}" for n in range(12)),
    )
    (_, ended) = batch_events(report(12, summary), "t1", show_payloads=False)[-1]
    assert ended["traceback"].startswith(
        "dead-lettered (service_key_unknown: 12): response_ids unk0, unk1"
    )
    assert "unk9 and 2 more" in ended["traceback"] and "unk10" not in ended["traceback"]
    assert "aicm-tasks dlq list" in ended["traceback"]


def test_a_refused_key_shows_as_retried_and_says_which_setting_to_check() -> None:
    summary = Summary(
        0, 4, {}, 1, retried_ids=("a", "b"), retry_detail='HTTP 401: {"detail": "bad key"}',
        unauthorized=True,
    )  # fmt: skip
    (last, ended) = batch_events(report(4, summary), "t1", show_payloads=False)[-1]
    assert last == RETRIED
    assert 'HTTP 401: {"detail": "bad key"}' in ended["exception"]
    assert "check AICM_API_KEY" in ended["traceback"]


def test_a_long_retry_detail_is_cut() -> None:
    summary = Summary(0, 1, {}, 1, retry_detail="HTTP 502: " + "x" * 5000)
    (_, ended) = batch_events(report(1, summary), "t1", show_payloads=False)[-1]
    assert "x" * (DETAIL_CHARS - len("HTTP 502: ")) in ended["exception"]
    assert "x" * (DETAIL_CHARS + 1) not in json.dumps(ended)


@given(
    delivered=st.integers(0, 500),
    retried=st.integers(0, 500),
    dead=st.dictionaries(st.sampled_from(["error", "rejected", "malformed"]), st.integers(0, 50)),
)
def test_every_batch_is_three_events_of_one_task_ending_by_its_worst_outcome(
    delivered: int, retried: int, dead: dict[str, int]
) -> None:
    summary = Summary(delivered, retried, dead, 1, retry_detail="HTTP 503: x")
    events = batch_events(report(1, summary), "t1", show_payloads=False)
    assert [fields["uuid"] for _, fields in events] == ["t1"] * 3
    expected = FAILED if sum(dead.values()) else RETRIED if retried else SUCCEEDED
    assert events[-1][0] == outcome_event(summary) == expected
    exception = events[-1][1].get("exception")
    assert (exception is None) == (expected == SUCCEEDED)
    if exception is not None:
        assert exception.startswith("DeadLettered(" if expected == FAILED else "RetryScheduled(")


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
    assert types(fresh.sent) == ["task-received", "task-started", "task-succeeded"]
    assert fresh.flushed == [3]


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


class Captured:
    """Celery's own event receiver on the test Redis, in a thread, feeding
    Celery's task ``State`` (Flower's is a subclass) and counting messages."""

    def __init__(self, app: Celery) -> None:
        self.state = app.events.State()
        self.messages: list[list[str]] = []  # the event types of each message
        self.types: list[str] = []
        self._connection = app.connection_for_read()
        self.receiver = app.events.Receiver(self._connection, handlers={"*": self._on_event})
        received = self.receiver._receive

        def counted(body: Any, message: Any) -> None:
            bodies = body if isinstance(body, list) else [body]
            self.messages.append([event["type"] for event in bodies])
            received(body, message)

        self.receiver._receive = counted
        self._thread = threading.Thread(
            target=lambda: self.receiver.capture(limit=None, timeout=None, wakeup=False),
            daemon=True,
        )

    def _on_event(self, event: dict[str, Any]) -> None:
        self.types.append(event["type"])
        self.state.event(event)

    def __enter__(self) -> Captured:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.receiver.should_stop = True
        self._thread.join(10)
        self._connection.close()


def test_over_redis_each_batch_is_one_message_and_ends_in_its_state(
    real_redis: redis.Redis,
) -> None:
    app = Celery("test-events-redis", broker=TEST_REDIS_URL, set_as_current=False)
    events = TaskEvents(app, "worker1@host")
    try:
        with Captured(app) as captured:
            # A PUBLISH before the receiver subscribed is lost: probe until it hears.
            wait_until(
                lambda: (
                    events._get_dispatcher().send("worker-probe")
                    or "worker-probe" in captured.types
                ),
                30,
                "the receiver to subscribe",
                interval_s=0.2,
            )
            outcomes = {
                "SUCCESS": Summary(3, 0, {}, 1),
                "RETRY": Summary(1, 2, {}, 1, retry_detail="HTTP 503: unavailable"),
                "FAILURE": Summary(1, 1, {"service_key_unknown": 1}, 1, retry_detail="HTTP 503"),
            }
            for summary in outcomes.values():
                events.batch_settled(report(3, summary))

            def batches() -> list[list[str]]:
                return [types for types in captured.messages if types[0].startswith("task-")]

            wait_until(lambda: len(batches()) == 3, 30, "the three batches' messages")
            assert batches() == [  # one PUBLISH per batch
                ["task-received", "task-started", "task-succeeded"],
                ["task-received", "task-started", "task-retried"],
                ["task-received", "task-started", "task-failed"],
            ]
            tasks = sorted(captured.state.tasks.values(), key=lambda t: t.clock)
            assert [task.state for task in tasks] == list(outcomes)
            assert all(task.name == TASK_NAME and task.started for task in tasks)
            # What celery-exporter labels queue_name (getattr(task, "queue", "celery")).
            assert {task.queue for task in tasks} == {"aicm.tracking"}
            assert tasks[2].exception.startswith("DeadLettered('1 of 3 records dead-lettered")
    finally:
        events.close()
