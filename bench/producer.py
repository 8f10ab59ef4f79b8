"""Producer subprocesses: ``python -m bench.producer COMMAND ...``; each writes a JSON result.

Commands:

* ``publish-cost``: time N publish calls of one contender (p50/p99 µs);
* ``flood``: publish N records as fast as possible from ``--start-at``;
* ``paced``: publish with ``track.delay`` at a fixed rate on an absolute schedule;
* ``prefill-aicm``: fill an aicm-tasks queue with ``track_many`` chunks;
* ``track-many``: time ``track_many`` on lists of records;
* ``celery-prefill``: fill a Celery anchor's queue with cloned messages;
* ``sdk-drain``: pre-fill the SDK's SQLite queue, then start its delivery thread;
* ``amqp-drain``: fill a RabbitMQ quorum queue (or stream), then drain (read) it with a bare
  py-amqp consumer;
* ``amqp-confirm-batch``: publish lists to a quorum queue with one confirm wait per list.

Commands that must outlive their publishing (the SDK's delivery thread runs in
the producer) wait for SIGTERM after writing their result.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from bench.publishers import KINDS, contender
from bench.records import CONTEXT, CUSTOMER_KEY, SERVICE_KEY, USAGE, record_dict, track_fields
from bench.stats import percentile

#: Longest a producer keeps its delivery thread alive waiting for SIGTERM.
MAX_LINGER_S = 900.0


def write_result(path: Path, result: dict[str, Any]) -> None:
    """Write ``result`` atomically (the parent polls for the file)."""
    tmp = path.with_suffix(".partial")
    tmp.write_text(json.dumps(result))
    os.replace(tmp, path)


def linger_until_terminated() -> None:
    """Block until SIGTERM (or :data:`MAX_LINGER_S`), keeping background threads alive."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait(MAX_LINGER_S)


def sleep_until(epoch_s: float) -> None:
    """Sleep until wall-clock ``epoch_s``."""
    delay = epoch_s - time.time()
    if delay > 0:
        time.sleep(delay)


def publish_cost(args: argparse.Namespace) -> dict[str, Any]:
    """Per-call cost of one contender over ``--calls`` timed calls."""
    c = contender(args.kind, args.sdk_dir, args.api_base)
    try:
        for _ in range(args.warmup):
            c.publish(c.prepare())
        timings_ns: list[int] = []
        started = time.perf_counter()
        for _ in range(args.calls):
            prepared = c.prepare()
            t0 = time.perf_counter_ns()
            c.publish(prepared)
            timings_ns.append(time.perf_counter_ns() - t0)
        wall_s = time.perf_counter() - started
    finally:
        c.close()
    timings_ns.sort()
    return {
        "calls": args.calls,
        "p50_us": percentile(timings_ns, 0.50) / 1000,
        "p99_us": percentile(timings_ns, 0.99) / 1000,
        "max_us": timings_ns[-1] / 1000,
        "mean_us": sum(timings_ns) / len(timings_ns) / 1000,
        "calls_per_s": args.calls / wall_s,
        "over_50ms": sum(1 for t in timings_ns if t > 50_000_000),
    }


def flood(args: argparse.Namespace) -> dict[str, Any]:
    """Publish ``--count`` records back to back from ``--start-at``."""
    c = contender(args.kind, args.sdk_dir, args.api_base)
    sleep_until(args.start_at)
    first = time.time()
    for _ in range(args.count):
        c.publish(c.prepare())
    last = time.time()
    return {"count": args.count, "first_publish": first, "last_publish": last}


def paced(args: argparse.Namespace) -> dict[str, Any]:
    """``track.delay`` at ``--rate``/s for ``--duration`` s; publish time per response_id.

    The schedule is absolute (call i is due at start + i/rate), so a slow call
    is caught up rather than shifting every later one.
    """
    from aicm_tasks import track

    total = int(args.rate * args.duration)
    ids = [uuid.uuid4().hex for _ in range(total)]
    published: dict[str, float] = {}
    interval_s = 1.0 / args.rate
    start = args.start_at
    behind = 0
    for i, rid in enumerate(ids):
        due = start + i * interval_s
        now = time.time()
        if due > now:
            time.sleep(due - now)
        elif now - due > 0.005:
            behind += 1
        published[rid] = time.time()
        track.delay(SERVICE_KEY, USAGE, response_id=rid, customer_key=CUSTOMER_KEY, context=CONTEXT)
    elapsed = time.time() - start
    return {
        "published": published,
        "count": total,
        "offered_per_s": total / elapsed,
        "late_calls": behind,
    }


def prefill_aicm(args: argparse.Namespace) -> dict[str, Any]:
    """Fill the aicm-tasks queue with ``track_many`` lists of ``--chunk`` records."""
    from aicm_tasks import track_many

    fields = track_fields()
    started = time.perf_counter()
    left = args.count
    while left:
        n = min(args.chunk, left)
        track_many([fields] * n)
        left -= n
    return {"count": args.count, "seconds": time.perf_counter() - started}


def track_many_rate(args: argparse.Namespace) -> dict[str, Any]:
    """``track_many`` on ``--batches`` lists of ``--batch`` records: records/s."""
    from aicm_tasks import track_many

    lists = [[track_fields() for _ in range(args.batch)] for _ in range(args.batches)]
    track_many(lists[0])  # connect and warm up
    started = time.perf_counter()
    for records in lists:
        track_many(records)
    seconds = time.perf_counter() - started
    return {
        "records": args.batch * args.batches,
        "seconds": seconds,
        "records_per_s": args.batch * args.batches / seconds,
    }


def celery_prefill(args: argparse.Namespace) -> dict[str, Any]:
    """Capture one ``.delay`` message of an anchor app and push ``--count`` clones."""
    import redis

    from bench.anchors import celery_messages

    if args.app == "plain":
        from bench.anchors.celery_plain import track
    else:
        from bench.anchors.celery_batches_app import track
    client = redis.Redis.from_url(os.environ["BENCH_BROKER_URL"])
    queue = os.environ["BENCH_QUEUE"]
    template = celery_messages.capture(track, client, queue, record_dict())
    started = time.perf_counter()
    records = (record_dict() for _ in range(args.count))
    pushed = celery_messages.push(client, queue, celery_messages.clone(template, records))
    return {"count": pushed, "seconds": time.perf_counter() - started}


def sdk_drain(args: argparse.Namespace) -> dict[str, Any]:
    """Pre-fill the SDK's SQLite queue, then start ``PersistentDelivery`` (its thread)."""
    from bench.anchors.sdk import make_delivery, prefill, write_ini

    write_ini(args.sdk_dir, args.api_base)
    db_path = args.sdk_dir / "queue.db"
    prefill(db_path, (record_dict() for _ in range(args.count)))
    started_at = time.time()
    delivery = make_delivery(args.sdk_dir, args.api_base, db_path)
    return {"count": args.count, "started_at": started_at, "delivery": repr(delivery)}


def amqp_drain(args: argparse.Namespace) -> dict[str, Any]:
    """Fill a quorum queue (``--stream``: a stream) with ``--count`` records, then time a
    bare py-amqp consumer (of a stream: a reader from its first offset).

    The fill is untimed: into a queue unconfirmed (confirming 100,000 one by
    one would take ~30 s), the consumer starting once a passive declare counts
    them all; into a stream with one confirm wait for all.
    The consumer: prefetch ``--prefetch``, one ``basic_ack(multiple=True)`` per
    ``--ack-every`` deliveries (the shape of a worker acking a settled batch).
    Clock: ``basic_consume`` sent -> the last ack sent and flushed by a
    round trip (a passive declare that sees the queue empty).
    """
    import amqp

    from tests.support.rabbitmq import connect
    from tests.support.rabbitmq_messages import (
        ConfirmedBatch,
        declare_quorum_queue,
        declare_stream,
        queue_counts,
    )

    url, queue = os.environ["BENCH_BROKER_URL"], os.environ["BENCH_QUEUE"]
    body = json.dumps(record_dict())
    with connect(url) as connection:
        channel = connection.channel()
        if args.stream:
            # A stream has no depth to poll (passive declare answers 0): the
            # fill waits for the confirms instead, once, after publishing all.
            declare_stream(channel, queue)
            batch = ConfirmedBatch(channel)
            for _ in range(args.count):
                batch.publish(queue, body)
            batch.wait(300)
        else:
            declare_quorum_queue(channel, queue)
            for _ in range(args.count):
                channel.basic_publish(
                    amqp.Message(body, delivery_mode=2, content_type="application/json"),
                    exchange="",
                    routing_key=queue,
                )
            deadline = time.monotonic() + 300
            while queue_counts(channel, queue)[0] < args.count:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{queue} never held {args.count} records")
                time.sleep(0.1)

    received = 0
    pending_tag = 0
    with connect(url) as connection:
        channel = connection.channel()

        def on_message(message: Any) -> None:
            nonlocal received, pending_tag
            received += 1
            pending_tag = message.delivery_tag
            if received % args.ack_every == 0:
                channel.basic_ack(pending_tag, multiple=True)

        channel.basic_qos(prefetch_size=0, prefetch_count=args.prefetch, a_global=False)
        started = time.perf_counter()
        # A stream is read from its first offset; reading removes nothing.
        arguments = {"x-stream-offset": "first"} if args.stream else None
        channel.basic_consume(queue, callback=on_message, no_ack=False, arguments=arguments)
        first_at: float | None = None
        while received < args.count:
            connection.drain_events(timeout=30)
            if first_at is None:
                first_at = time.perf_counter()
        if received % args.ack_every:
            channel.basic_ack(pending_tag, multiple=True)
        # A round trip after the last ack (a stream answers 0 whatever it holds).
        ready, _ = queue_counts(channel, queue)
        ended = time.perf_counter()
    return {
        "count": received,
        "left": ready,
        "seconds": ended - started,
        "messages_per_s": received / (ended - started),
        "first_delivery_s": (first_at or ended) - started,
    }


def amqp_confirm_batch(args: argparse.Namespace) -> dict[str, Any]:
    """``--batches`` lists of ``--batch`` records to a quorum queue, one confirm wait per list.

    The shape ``track_many`` will have on RabbitMQ: every record of a list
    published, then one wait for all their confirms. The JSON of each record is
    built before the clock starts (as ``track-many`` builds its lists first).
    """
    from tests.support.rabbitmq import connect
    from tests.support.rabbitmq_messages import ConfirmedBatch, declare_quorum_queue

    url, queue = os.environ["BENCH_BROKER_URL"], os.environ["BENCH_QUEUE"]
    lists = [[json.dumps(record_dict()) for _ in range(args.batch)] for _ in range(args.batches)]
    with connect(url) as connection:
        channel = connection.channel()
        declare_quorum_queue(channel, queue)
        batch = ConfirmedBatch(channel)
        for body in lists[0][:10]:  # warm up
            batch.publish(queue, body)
        batch.wait(30)
        nacked = 0
        started = time.perf_counter()
        for bodies in lists:
            for body in bodies:
                batch.publish(queue, body)
            nacked += len(batch.wait(60))
        seconds = time.perf_counter() - started
    records = args.batch * args.batches
    return {"records": records, "seconds": seconds, "records_per_s": records / seconds,
            "nacked": nacked}  # fmt: skip


COMMANDS = {
    "publish-cost": publish_cost,
    "flood": flood,
    "paced": paced,
    "prefill-aicm": prefill_aicm,
    "track-many": track_many_rate,
    "celery-prefill": celery_prefill,
    "sdk-drain": sdk_drain,
    "amqp-drain": amqp_drain,
    "amqp-confirm-batch": amqp_confirm_batch,
}
#: Commands whose process must stay up (the SDK's delivery thread) after the result.
LINGERING = {"sdk-drain"}


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(prog="python -m bench.producer")
    parser.add_argument("command", choices=sorted(COMMANDS))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--kind", choices=KINDS, default="aicm")
    parser.add_argument("--app", choices=("plain", "batches"), default="plain")
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--chunk", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=1_000)
    parser.add_argument("--batches", type=int, default=50)
    parser.add_argument("--rate", type=float, default=2_000)
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--start-at", type=float, default=0.0)
    parser.add_argument("--sdk-dir", type=Path)
    parser.add_argument("--api-base")
    parser.add_argument("--prefetch", type=int, default=2_000)
    parser.add_argument("--ack-every", type=int, default=500)
    parser.add_argument("--stream", action="store_true", help="amqp-drain: a stream, not a queue")
    parser.add_argument("--linger", action="store_true", help="wait for SIGTERM after the result")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Run one command, write its result, and linger if it must."""
    args = parse(argv)
    result = COMMANDS[args.command](args)
    write_result(args.out, result)
    if args.command in LINGERING or args.linger:
        linger_until_terminated()


if __name__ == "__main__":
    main()
