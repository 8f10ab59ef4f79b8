from __future__ import annotations

import json

from aicm_tasks.broker.messages import Item, decode, encode
from aicm_tasks.producer.record import build_record
from aicm_tasks.worker.delivery import plan
from aicm_tasks.worker.outcomes import BatchVerdict, Fate, Reason, RecordResult, VerdictKind
from aicm_tasks.worker.retry import BackoffPolicy
from tests.support.delivery import deliver

POLICY = BackoffPolicy(base_s=1, max_s=60, max_retries=3)


def item(rid: str, service: str = "openai::gpt-4o-mini", meta: dict | None = None) -> Item:
    record = build_record(service, {"input_tokens": 1}, response_id=rid)
    return decode(encode(record.body, meta))


def sent_ids(body: bytes) -> list[str]:
    return [r["response_id"] for r in json.loads(body)["tracked"]]


def results_post(statuses: dict[str, str], calls: list[list[str]]):
    def post(body: bytes) -> BatchVerdict:
        ids = sent_ids(body)
        calls.append(ids)
        results = {rid: RecordResult(statuses[rid], ("why",)) for rid in ids if rid in statuses}
        return BatchVerdict(VerdictKind.RESULTS, "200", 200, results=results)

    return post


def test_a_mixed_batch_is_routed_record_by_record() -> None:
    items = [item("ok1"), item("ok2"), item("unk", "acme::x"), item("bad"), item("missing")]
    calls: list[list[str]] = []
    statuses = {"ok1": "queued", "ok2": "completed", "unk": "service_key_unknown", "bad": "error"}
    outcomes, requests = deliver(items, results_post(statuses, calls))
    fates = {o.item.response_id: (o.fate, o.reason) for o in outcomes}
    assert fates == {
        "ok1": (Fate.DELIVERED, None),
        "ok2": (Fate.DELIVERED, None),
        "unk": (Fate.DEAD_LETTER, Reason.SERVICE_KEY_UNKNOWN),
        "bad": (Fate.DEAD_LETTER, Reason.ERROR),
        "missing": (Fate.RETRY, None),
    }
    assert requests == 1 and len(calls) == 1


def test_copies_of_one_response_id_are_sent_once_and_share_the_fate() -> None:
    items = [item("dup"), item("dup", meta={"attempts": 1}), item("other")]
    calls: list[list[str]] = []
    outcomes, _ = deliver(items, results_post({"dup": "queued", "other": "queued"}, calls))
    assert calls == [["dup", "other"]]
    assert [o.fate for o in outcomes] == [Fate.DELIVERED] * 3


def test_a_refused_request_is_split_until_the_poison_is_isolated() -> None:
    items = [item(f"r{n}") for n in range(16)]
    poison = {"r5", "r11"}
    calls: list[list[str]] = []

    def post(body: bytes) -> BatchVerdict:
        ids = sent_ids(body)
        calls.append(ids)
        if poison & set(ids):
            return BatchVerdict(VerdictKind.REFUSED, "HTTP 422", 422)
        return BatchVerdict(
            VerdictKind.RESULTS, "200", 200, results={i: RecordResult("queued") for i in ids}
        )

    outcomes, requests = deliver(items, post)
    dead = {o.item.response_id for o in outcomes if o.fate is Fate.DEAD_LETTER}
    delivered = {o.item.response_id for o in outcomes if o.fate is Fate.DELIVERED}
    assert dead == poison
    assert delivered == {f"r{n}" for n in range(16)} - poison
    assert all(
        o.reason is Reason.REJECTED and o.http_status == 422
        for o in outcomes
        if o.fate is Fate.DEAD_LETTER
    )
    assert requests == len(calls) < 16


def test_transient_failure_retries_the_whole_batch_with_retry_after() -> None:
    items = [item("a"), item("b")]
    outcomes, _ = deliver(
        items, lambda body: BatchVerdict(VerdictKind.TRANSIENT, "HTTP 429", 429, retry_after_s=40)
    )
    assert all(o.fate is Fate.RETRY and o.retry_after_s == 40 for o in outcomes)
    resolution, summary = plan(outcomes, POLICY, auth_retry_interval_s=5, now=1000.0)
    assert summary.retried == 2
    assert all(delay_s >= 40 for delay_s, _ in resolution.retries)
    metas = [decode(message).meta for _, message in resolution.retries]
    assert all(
        m["retries"] == 1 and m["attempts"] == 1 and m["last_http_status"] == 429 for m in metas
    )


def test_unauthorized_keeps_records_without_counting_a_retry() -> None:
    items = [item("a", meta={"attempts": 2, "retries": 3})]
    outcomes, _ = deliver(
        items, lambda body: BatchVerdict(VerdictKind.UNAUTHORIZED, "HTTP 401", 401)
    )
    resolution, summary = plan(outcomes, POLICY, auth_retry_interval_s=5, now=1000.0)
    assert resolution.dead_letters == [] and summary.retried == 1
    ((delay_s, message),) = resolution.retries
    assert delay_s == 5.0
    assert decode(message).meta["retries"] == 3  # not counted although at the limit


def test_retries_exhausted_become_dead_letters_with_the_whole_record() -> None:
    items = [item("tired", meta={"attempts": 3, "retries": 3, "first_failure_at": 10.0})]
    outcomes, _ = deliver(
        items, lambda body: BatchVerdict(VerdictKind.TRANSIENT, "HTTP 503: down", 503)
    )
    resolution, summary = plan(outcomes, POLICY, auth_retry_interval_s=5, now=2000.0)
    assert resolution.retries == [] and summary.dead_lettered == {"retries_exhausted": 1}
    ((dead_id, entry_json),) = resolution.dead_letters
    entry = json.loads(entry_json)
    assert dead_id == "tired"
    assert entry["reason"] == "retries_exhausted" and entry["attempts"] == 4
    assert (
        entry["http_status"] == 503
        and entry["first_failure_at"] == 10.0
        and entry["last_failure_at"] == 2000.0
    )
    assert entry["record"]["response_id"] == "tired" and entry["record"]["payload"] == {
        "input_tokens": 1
    }


def test_malformed_messages_are_dead_lettered_without_being_sent() -> None:
    calls: list[list[str]] = []
    items = [decode(b"not json at all"), decode(b'{"no": "id"}'), item("fine")]
    outcomes, _ = deliver(items, results_post({"fine": "queued"}, calls))
    assert calls == [["fine"]]
    resolution, summary = plan(outcomes, POLICY, auth_retry_interval_s=5)
    assert summary.dead_lettered == {"malformed": 2} and summary.delivered == 1
    entries = [json.loads(e) for _, e in resolution.dead_letters]
    assert {e["raw"] for e in entries} == {"not json at all", '{"no": "id"}'}


def test_stats_count_every_fate() -> None:
    items = [item("ok"), item("unk"), item("gone")]
    outcomes, _ = deliver(items, results_post({"ok": "queued", "unk": "service_key_unknown"}, []))
    resolution, _ = plan(outcomes, POLICY, auth_retry_interval_s=5)
    assert resolution.stats == {
        "delivered": 1,
        "retried": 1,
        "dead_lettered:service_key_unknown": 1,
    }


def server_failing_on(poison: set[str], calls: list[list[str]], status: int = 500):
    """A server that answers ``status`` to every request holding a poison record."""

    def post(body: bytes) -> BatchVerdict:
        ids = sent_ids(body)
        calls.append(ids)
        if poison & set(ids):
            return BatchVerdict(VerdictKind.TRANSIENT, f"HTTP {status}", status)
        return BatchVerdict(
            VerdictKind.RESULTS, "200", 200, results={i: RecordResult("queued") for i in ids}
        )

    return post


def test_a_first_500_retries_the_batch_whole() -> None:
    calls: list[list[str]] = []
    items = [item(f"r{n}") for n in range(50)]
    outcomes, requests = deliver(items, server_failing_on({"r7"}, calls))
    assert requests == 1 and all(o.fate is Fate.RETRY for o in outcomes)


def test_a_500_for_records_that_failed_before_splits_until_the_poison_is_alone() -> None:
    for _ in range(20):  # the probes are drawn at random: any draw must do
        calls: list[list[str]] = []
        items = [item(f"r{n}", meta={"attempts": 1, "retries": 1}) for n in range(49)]
        items.insert(17, item("poison", meta={"attempts": 1, "retries": 1}))
        outcomes, requests = deliver(items, server_failing_on({"poison"}, calls))
        retried = [o.item.response_id for o in outcomes if o.fate is Fate.RETRY]
        delivered = [o.item.response_id for o in outcomes if o.fate is Fate.DELIVERED]
        assert retried == ["poison"] and len(delivered) == 49
        # The whole, up to two probes, then bisection: two requests per level.
        assert requests <= 1 + 2 + 2 * 6


def test_a_fresh_record_batched_with_a_returning_poison_is_not_held() -> None:
    for _ in range(20):
        calls: list[list[str]] = []
        items = [item(f"fresh{n}") for n in range(20)] + [
            item("poison", meta={"attempts": 3, "retries": 3})
        ]
        outcomes, _ = deliver(items, server_failing_on({"poison"}, calls))
        assert [o.item.response_id for o in outcomes if o.fate is Fate.RETRY] == ["poison"]


def test_many_poisons_anywhere_are_all_isolated_in_one_attempt(monkeypatch) -> None:
    # Records retried together come back together: a batch of returning
    # records can hold several poisons, in any places.
    import random

    from aicm_tasks.worker import attempts

    for poison in ({"r3", "r20"}, {"r0", "r31"}, {"r1", "r9", "r17", "r25"}):
        for seed in range(30):
            monkeypatch.setattr(attempts, "_PROBE_RNG", random.Random(seed))
            calls: list[list[str]] = []
            items = [item(f"r{n}", meta={"retries": 1}) for n in range(32)]
            outcomes, requests = deliver(items, server_failing_on(poison, calls))
            retried = {o.item.response_id for o in outcomes if o.fate is Fate.RETRY}
            if retried == poison:
                continue
            # Or both probes drew a poison (about (k/n)**2): nothing was learnt,
            # at the outage's price, and the next attempt draws again.
            assert requests == 3 and all(set(call) <= poison for call in calls[1:])
            assert len(retried) == 32


def test_an_outage_costs_a_bounded_number_of_requests_per_attempt() -> None:
    # The whole, then two records alone (probes); never a bisection of an outage.
    for retries, most in [(0, 1), (1, 3), (2, 3), (20, 3)]:
        calls: list[list[str]] = []
        items = [item(f"r{n}", meta={"retries": retries}) for n in range(500)]
        outcomes, requests = deliver(items, server_failing_on({f"r{n}" for n in range(500)}, calls))
        assert requests == most and all(o.fate is Fate.RETRY for o in outcomes)


def test_503_is_an_outage_never_split() -> None:
    calls: list[list[str]] = []
    items = [item(f"r{n}", meta={"retries": 5}) for n in range(8)]
    outcomes, requests = deliver(items, server_failing_on({"r1"}, calls, status=503))
    assert requests == 1 and all(o.fate is Fate.RETRY for o in outcomes)


def test_a_record_whose_planning_raises_is_dead_lettered_malformed_and_the_rest_settle(
    monkeypatch,
) -> None:
    import aicm_tasks.worker.delivery as delivery

    real = delivery.dead_letter_entry

    def explode_for_bad(it, outcome, reason, meta):
        if it.response_id == "bad":
            raise RecursionError("maximum recursion depth exceeded")
        return real(it, outcome, reason, meta)

    monkeypatch.setattr(delivery, "dead_letter_entry", explode_for_bad)
    items = [item("bad"), item("other"), item("fine")]
    statuses = {"bad": "error", "other": "error", "fine": "queued"}
    outcomes, _ = deliver(items, results_post(statuses, []))
    resolution, summary = plan(outcomes, POLICY, auth_retry_interval_s=5)
    assert summary.delivered == 1 and summary.dead_lettered == {"malformed": 1, "error": 1}
    entries = {dead_id: json.loads(e) for dead_id, e in resolution.dead_letters}
    assert entries["bad"]["reason"] == "malformed" and "RecursionError" in entries["bad"]["detail"]
    assert json.loads(entries["bad"]["raw"])["response_id"] == "bad"


def test_plan_after_error_counts_an_attempt_for_every_record_until_they_end() -> None:
    from aicm_tasks.worker.delivery import plan_after_error

    raw = [item("a").raw, b"\xff garbage"]
    boom = RuntimeError("a bug")
    for round_ in range(POLICY.max_retries + 1):
        resolution, summary = plan_after_error(raw, boom, POLICY)
        assert summary.dead_lettered.get("malformed") == 1  # the garbage, at once
        if round_ < POLICY.max_retries:
            ((_, message),) = resolution.retries
            assert decode(message).retries == round_ + 1
            raw = [message, b"\xff garbage"]
    ((_, last),) = [d for d in resolution.dead_letters if d[0] == "a"]
    assert json.loads(last)["reason"] == "retries_exhausted"
    assert "RuntimeError: a bug" in json.loads(last)["detail"]


def test_metadata_with_counts_of_the_wrong_type_reads_as_zero() -> None:
    bad = decode(b'{"attempts":"x","retries":[1]}\n' + item("a").body)
    assert bad.attempts == 0 and bad.retries == 0 and not bad.malformed


# -- what status judges by: rate counts and health times, written with the settle --


def test_an_attempt_counts_its_requests_by_how_they_went() -> None:
    from aicm_tasks.worker.attempts import attempt

    answers = iter(
        [
            BatchVerdict(VerdictKind.TRANSIENT, "network: ConnectError"),
            BatchVerdict(VerdictKind.UNAUTHORIZED, "HTTP 401", 401),
        ]
    )
    items = [item("a"), item("b", meta={"api_key_alias": "team-b"})]
    done = attempt(items, lambda body: next(answers), {"team-b": lambda body: next(answers)})
    assert (done.requests, done.transport_failed, done.unauthorized) == (2, 1, 1)


def test_a_delivered_batch_counts_its_records_and_notes_the_delivery() -> None:
    calls: list[list[str]] = []
    done_outcomes, requests = deliver([item("a"), item("b")], results_post({}, calls))
    resolution, _ = plan(
        [o for o in done_outcomes if o.fate is not Fate.DELIVERED],
        POLICY,
        auth_retry_interval_s=5,
        requests=requests,
    )
    # Both records got no result: retried; nothing delivered, yet the server took the key.
    assert resolution.rates == {"retried": 2, "requests": 1}
    assert resolution.noted == () and resolution.started == ("retrying_since",)
    assert resolution.ended == ("unauthorized_since",)
    resolution, _ = plan([], POLICY, auth_retry_interval_s=5, delivered=2, requests=1)
    assert resolution.rates == {"delivered": 2, "requests": 1}
    assert resolution.noted == ("last_delivered_at",) and resolution.started == ()
    assert resolution.ended == ("retrying_since", "unauthorized_since")


def test_a_refused_key_starts_a_run_and_transport_failures_leave_that_run_alone() -> None:
    unauthorized = deliver(
        [item("a")], lambda body: BatchVerdict(VerdictKind.UNAUTHORIZED, "x", 401)
    )
    resolution, _ = plan(
        unauthorized[0], POLICY, auth_retry_interval_s=5, requests=1, unauthorized=1
    )
    assert resolution.rates == {"retried": 1, "requests": 1, "unauthorized": 1}
    assert resolution.noted == ("last_unauthorized_at",)
    assert resolution.started == ("retrying_since", "unauthorized_since")
    assert resolution.ended == ()
    down = deliver([item("a")], lambda body: BatchVerdict(VerdictKind.TRANSIENT, "timeout"))
    resolution, _ = plan(down[0], POLICY, auth_retry_interval_s=5, requests=1, transport_failed=1)
    assert resolution.rates == {"retried": 1, "requests": 1, "transport_failed": 1}
    assert (resolution.noted, resolution.started, resolution.ended) == (
        (),
        ("retrying_since",),
        (),
    )


def test_a_backfills_enqueue_time_survives_its_retries() -> None:
    items = [item("old", meta={"enqueued_at": 1234.5})]
    outcomes, _ = deliver(items, lambda body: BatchVerdict(VerdictKind.TRANSIENT, "HTTP 503", 503))
    resolution, _ = plan(outcomes, POLICY, auth_retry_interval_s=5, now=2000.0)
    ((_, message),) = resolution.retries
    assert decode(message).meta["enqueued_at"] == 1234.5


def test_a_batch_of_dead_letters_alone_ends_a_run_of_retries() -> None:
    unknown = {"a": "service_key_unknown"}
    outcomes, requests = deliver([item("a")], results_post(unknown, []))
    resolution, _ = plan(outcomes, POLICY, auth_retry_interval_s=5, requests=requests)
    assert resolution.rates == {"dead_lettered": 1, "requests": 1}
    assert resolution.started == () and "retrying_since" in resolution.ended
