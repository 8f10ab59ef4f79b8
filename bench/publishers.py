"""One publish call per contender, for producer subprocesses.

Each contender is a pair: ``prepare()`` builds the caller's input (outside any
timer) and ``publish(prepared)`` is the timed call. aicm-tasks and the SDK get
the call's fields and build the record themselves (uuid, timestamp, JSON),
as a user's call does; plain Celery and raw LPUSH get the record dict built
beforehand (that saves them ~2 µs of uuid4 + time a call).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.records import CONTEXT, CUSTOMER_KEY, SERVICE_KEY, USAGE, record_dict

#: Contenders of the publish-cost scenario (the ``amqp-*`` and ``celery-amqp*`` ones
#: are the rabbitmq scenario's: ``BENCH_BROKER_URL`` is then an ``amqp://`` URL).
KINDS = (
    "aicm",
    "celery",
    "sdk",
    "lpush",
    "aicm-amqp",
    "amqp-confirm",
    "amqp-noconfirm",
    "celery-amqp",
    "celery-amqp-quorum",
)


@dataclass
class Contender:
    """A timed publish call and what it needs prepared."""

    prepare: Callable[[], Any]
    publish: Callable[[Any], Any]
    close: Callable[[], None]


def _nothing() -> None:
    return None


def aicm() -> Contender:
    """``track.delay(service_key, usage, customer_key=..., context=...)``, the public API."""
    from aicm_tasks import track

    def publish(_: Any) -> Any:
        return track.delay(SERVICE_KEY, USAGE, customer_key=CUSTOMER_KEY, context=CONTEXT)

    return Contender(_nothing, publish, _nothing)


def celery() -> Contender:
    """Plain Celery: ``task.delay(record)`` on the one-task-per-record anchor app."""
    from bench.anchors.celery_plain import track

    return Contender(record_dict, track.delay, _nothing)


def lpush() -> Contender:
    """redis-py ``LPUSH`` of the record's JSON (``json.dumps`` timed, as anchor B)."""
    import redis

    client = redis.Redis.from_url(os.environ["BENCH_BROKER_URL"])
    queue = os.environ["BENCH_QUEUE"]

    def publish(record: dict[str, Any]) -> Any:
        return client.lpush(queue, json.dumps(record))

    return Contender(record_dict, publish, client.close)


def aicm_amqp() -> Contender:
    """``track.delay`` on RabbitMQ: ``AICM_BROKER_URL`` is ``BENCH_BROKER_URL`` (amqp), the
    record queue ``BENCH_QUEUE``, declared with the whole topology first, as a worker
    starting would. Each call returns once the broker confirmed the record."""
    os.environ["AICM_BROKER_URL"] = os.environ["BENCH_BROKER_URL"]
    os.environ["AICM_QUEUE"] = os.environ["BENCH_QUEUE"]
    from aicm_tasks import Settings, track
    from aicm_tasks.broker.rabbitmq.names import RabbitNames
    from aicm_tasks.broker.rabbitmq.topology import declare_topology

    settings = Settings.from_env()
    declare_topology(settings.broker_url, RabbitNames(settings.queue, settings.key_prefix))

    def publish(_: Any) -> Any:
        return track.delay(SERVICE_KEY, USAGE, customer_key=CUSTOMER_KEY, context=CONTEXT)

    return Contender(_nothing, publish, _nothing)


def amqp_publish(confirm: bool) -> Contender:
    """py-amqp ``basic_publish`` of the record's JSON, persistent, to a quorum queue.

    With ``confirm`` the connection is in confirm mode and each call waits for
    the broker's ``basic.ack`` (one round trip and the quorum queue's commit:
    the floor under any publish that may promise "the broker holds it").
    ``json.dumps`` is timed, as for LPUSH.
    """
    from tests.support.rabbitmq import connect
    from tests.support.rabbitmq_messages import declare_quorum_queue, publish_confirmed

    connection = connect(os.environ["BENCH_BROKER_URL"], confirm_publish=confirm)
    channel = connection.channel()
    queue = os.environ["BENCH_QUEUE"]
    declare_quorum_queue(channel, queue)

    def publish(record: dict[str, Any]) -> Any:
        publish_confirmed(channel, queue, record)

    return Contender(record_dict, publish, connection.close)


def celery_amqp(quorum: bool) -> Contender:
    """Plain Celery ``task.delay(record)`` on RabbitMQ (the anchor app, ``BENCH_BROKER_URL`` amqp).

    Celery's defaults: a classic queue and no publisher confirm. With
    ``quorum``, what Celery's docs ask for quorum queues:
    ``task_default_queue_type="quorum"`` and ``confirm_publish``.
    """
    from bench.anchors.celery_plain import track

    if quorum:
        track.app.conf.update(
            task_default_queue_type="quorum",
            broker_transport_options={"confirm_publish": True},
        )
    return Contender(record_dict, track.delay, _nothing)


def sdk(directory: Path, api_base: str, db_path: Path) -> Contender:
    """The SDK: ``Tracker.track(...)`` with ``PersistentDelivery`` (its thread delivering)."""
    from bench.anchors.sdk import make_tracker

    tracker = make_tracker(directory, api_base, db_path)

    def publish(_: Any) -> Any:
        return tracker.track(SERVICE_KEY, USAGE, customer_key=CUSTOMER_KEY, context=CONTEXT)

    def close() -> None:
        tracker.delivery.stop()

    return Contender(_nothing, publish, close)


def contender(kind: str, sdk_dir: Path | None, api_base: str | None) -> Contender:
    """Build the contender ``kind`` (one of :data:`KINDS`)."""
    if kind == "aicm":
        return aicm()
    if kind == "celery":
        return celery()
    if kind == "lpush":
        return lpush()
    if kind == "aicm-amqp":
        return aicm_amqp()
    if kind in ("amqp-confirm", "amqp-noconfirm"):
        return amqp_publish(confirm=kind == "amqp-confirm")
    if kind in ("celery-amqp", "celery-amqp-quorum"):
        return celery_amqp(quorum=kind == "celery-amqp-quorum")
    if kind == "sdk":
        if sdk_dir is None or api_base is None:
            raise ValueError("the sdk contender needs --sdk-dir and --api-base")
        return sdk(sdk_dir, api_base, sdk_dir / "queue.db")
    raise ValueError(f"unknown contender {kind!r}; one of {', '.join(KINDS)}")
