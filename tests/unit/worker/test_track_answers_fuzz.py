"""An attacker's /track server: any answer, per request, through the real transport.

Each request of a delivery attempt gets an answer hypothesis draws (any status,
Retry-After garbage, bodies that are JSON of the wrong shape, results naming
ids never sent, duplicate or missing ids, unknown statuses, non-UTF-8, nesting
past the parser, large bodies) or a network error. Whatever it draws, every
record must end in exactly one fate, nothing may raise, the number of requests
stays bounded, and a record is delivered only if an answer to a request that
held it said so.
"""

from __future__ import annotations

import json

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aicm_tasks.broker.messages import Item, decode, encode
from aicm_tasks.producer.record import build_record
from aicm_tasks.worker.delivery import attempt, plan
from aicm_tasks.worker.outcomes import DELIVERED_STATUSES, classify_response
from aicm_tasks.worker.retry import BackoffPolicy
from aicm_tasks.worker.transport import TrackTransport

POLICY = BackoffPolicy(base_s=1, max_s=60, max_retries=3)
STATUSES = ["queued", "completed", "service_key_unknown", "error", "", "QUEUED", "later", "ok"]


def item(rid: str, retries: int) -> Item:
    record = build_record("openai::gpt-4o-mini", {"input_tokens": 1}, response_id=rid)
    return decode(encode(record.body, {"retries": retries} if retries else None))


json_leaf = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
json_any = st.recursive(
    json_leaf,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=8,
)


@st.composite
def answer_to(draw: st.DrawFn, sent: list[str]) -> httpx.Response | Exception:
    """One answer to a request that holds ``sent``."""
    kind = draw(
        st.sampled_from(["results", "results", "wrong-shape", "bytes", "deep", "big", "network"])
    )
    status = draw(
        st.sampled_from([200, 200, 200, 201, 204, 302, 400, 401, 403, 404, 413, 422, 429, 500])
        | st.sampled_from([502, 503, 504, 599])
        | st.integers(100, 599)
    )
    headers: dict[str, str] = {}
    if draw(st.booleans()):
        headers["Retry-After"] = draw(
            st.sampled_from(
                ["1", "-5", "1e999", "nan", "inf", "soon", "", "Wed, 21 Oct 2015 07:28:00 GMT"]
            )
            | st.from_regex(r"[ -~]{0,20}", fullmatch=True)
        )
    if kind == "network":
        return draw(
            st.sampled_from(
                [httpx.ConnectError("refused"), httpx.ReadTimeout("slow"), httpx.ReadError("reset")]
            )
        )
    if kind == "results":
        ids = draw(
            st.lists(st.sampled_from([*sent, "never-sent", ""]), max_size=len(sent) + 3)
            if sent
            else st.just([])
        )
        results: list[object] = []
        for rid in ids:
            entry: dict[str, object] = {
                "response_id": rid,
                "status": draw(st.sampled_from(STATUSES)),
            }
            if draw(st.booleans()):
                entry["errors"] = draw(json_any)
            results.append(entry)
        body = json.dumps({"results": results}).encode()
    elif kind == "wrong-shape":
        body = json.dumps(draw(json_any)).encode()
    elif kind == "bytes":
        body = draw(st.binary(max_size=64))
    elif kind == "deep":
        depth = draw(st.sampled_from([10, 1_000, 100_000]))
        body = b'{"results":' + b"[" * depth + b"]" * depth + b"}"
    else:
        body = b'{"results":[' + b'{"response_id":"x","status":"queued"},' * 20_000 + b"1]}"
    return httpx.Response(status, headers=headers, content=body)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.data(),
    size=st.integers(1, 12),
    retries=st.integers(0, 4),
    duplicated=st.booleans(),
)
def test_any_track_answer_leaves_every_record_exactly_one_fate(
    data: st.DataObject, size: int, retries: int, duplicated: bool
) -> None:
    items = [item(f"r{n}", retries) for n in range(size)]
    if duplicated:  # a redelivered copy in the same batch
        items.append(item("r0", retries + 1))
    accepted: set[str] = set()

    def handler(request: httpx.Request) -> httpx.Response:
        sent = [r["response_id"] for r in json.loads(request.content)["tracked"]]
        answer = data.draw(answer_to(sent))
        if isinstance(answer, Exception):
            raise answer
        verdict = classify_response(answer.status_code, answer.headers, answer.content)
        accepted.update(
            rid
            for rid, result in verdict.results.items()
            if rid in sent and result.status in DELIVERED_STATUSES
        )
        return answer

    transport = TrackTransport(
        "http://track.test/track", "key", transport=httpx.MockTransport(handler)
    )
    done = attempt(items, transport.poster())

    fates = [o.item for o in done.failed] + done.delivered
    assert sorted(map(id, fates)) == sorted(map(id, items)), "every record exactly one fate"
    assert {i.response_id for i in done.delivered} <= accepted
    # The split tree over the distinct records has at most 2n - 1 nodes, each sent once.
    assert 1 <= done.requests <= 2 * size - 1
    resolution, summary = plan(
        done.failed, POLICY, auth_retry_interval_s=5, delivered=len(done.delivered)
    )
    assert len(resolution.retries) + len(resolution.dead_letters) == len(done.failed)
    assert summary.delivered + summary.retried + sum(summary.dead_lettered.values()) == len(items)
    assert all(0 <= delay_s <= 3600 for delay_s, _ in resolution.retries)


def test_an_answer_past_the_size_limit_is_abandoned_as_transient(monkeypatch) -> None:
    monkeypatch.setattr("aicm_tasks.worker.transport.MAX_ANSWER_BYTES", 1000)
    body = json.dumps({"results": [{"response_id": "r0", "status": "queued"}] * 100}).encode()
    transport = TrackTransport(
        "http://track.test/track",
        "key",
        transport=httpx.MockTransport(lambda request: httpx.Response(200, content=body)),
    )
    done = attempt([item("r0", 0)], transport.poster())
    assert done.delivered == [] and done.failed[0].detail.startswith("timeout: HTTP 200 answer")
