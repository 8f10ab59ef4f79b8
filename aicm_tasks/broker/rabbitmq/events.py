"""The messages of the dead-letter and figures streams, and the dead-letter fold.

A queue cannot be read by id, and reading one consumes it, so the dead-letter
store is a stream of events (``docs/design/rabbitmq.md``, "The dead-letter
store"): a worker appends one ``dead`` event per dead-lettered record (the
entry exactly as the Redis store keeps it); ``aicm-tasks dlq replay`` and
``purge`` append one ``replayed``/``purged`` event naming the ids they
settled. The store's state is the fold of the log: an id's last ``dead``
event, unless a later ``replayed`` or ``purged`` names it.

Each worker also appends one ``figures`` event per settled batch to the
figures stream: the same counters, rate increments and health marks the Redis
RESOLVE script writes (:class:`~aicm_tasks.broker.resolution.Resolution`), with
the worker's name and the time of the settle on the worker's clock (RabbitMQ
gives an AMQP 0-9-1 client no server time; no record's fate depends on it).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from aicm_tasks.broker.resolution import Resolution

DEAD = "dead"
REPLAYED = "replayed"
PURGED = "purged"
FIGURES = "figures"


def dead_event(dead_letter_id: str, entry_json: str, at: float) -> bytes:
    """One dead-lettered record: ``entry_json`` is the entry as :mod:`worker.delivery` builds it."""
    return json.dumps(
        {"event": DEAD, "id": dead_letter_id, "at": at, "entry": json.loads(entry_json)},
        separators=(",", ":"),
    ).encode()


def settled_event(kind: str, ids: Iterable[str], at: float) -> bytes:
    """Ids replayed or purged (``kind`` is :data:`REPLAYED` or :data:`PURGED`)."""
    if kind not in (REPLAYED, PURGED):
        raise ValueError(f"not a settling event: {kind!r}")
    return json.dumps(
        {"event": kind, "ids": sorted(set(ids)), "at": at}, separators=(",", ":")
    ).encode()


def figures_event(consumer: str, name: str, resolution: Resolution, at: float) -> bytes:
    """One settled batch's figures, from the worker ``consumer`` (Celery hostname ``name``)."""
    return json.dumps(
        {
            "event": FIGURES,
            "consumer": consumer,
            "name": name,
            "at": at,
            "stats": resolution.stats or {},
            "rates": resolution.rates or {},
            "noted": list(resolution.noted),
            "started": list(resolution.started),
            "ended": list(resolution.ended),
        },
        separators=(",", ":"),
    ).encode()


def fold_dead_letters(events: Iterable[bytes | dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The live dead letters after ``events`` (stream order): id -> its entry.

    An event that is not JSON, or of a kind not known here (a newer version's),
    is skipped: the store must stay readable by an older CLI.
    """
    live: dict[str, dict[str, Any]] = {}
    for raw in events:
        try:
            event = raw if isinstance(raw, dict) else json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            continue
        if not isinstance(event, dict):
            continue
        kind = event.get("event")
        if (
            kind == DEAD
            and isinstance(event.get("id"), str)
            and isinstance(event.get("entry"), dict)
        ):
            live.pop(event["id"], None)  # keep stream order: a newer entry goes last
            live[event["id"]] = event["entry"]
        elif kind in (REPLAYED, PURGED) and isinstance(event.get("ids"), list):
            for dead_id in event["ids"]:
                if isinstance(dead_id, str):
                    live.pop(dead_id, None)
    return live
