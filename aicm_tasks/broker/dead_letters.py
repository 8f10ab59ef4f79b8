"""The dead-letter store: list, inspect, replay, purge and export dead letters.

Dead letters live in the broker's Redis (written atomically by the worker when
a batch is settled, see :mod:`aicm_tasks.broker.records`): a hash ``<prefix>:dlq`` of
``id -> entry JSON`` and a sorted set ``<prefix>:dlq:index`` of ids by last
failure time. An entry's id is the record's ``response_id``, so a record that
fails again after a replay replaces its own entry, its attempts counted.

An id may be given by a unique prefix, as ``git`` takes commits
(:meth:`DeadLetterStore.resolve`): ZSCAN with a MATCH pattern over the index,
so only matching ids cross the wire and the client holds a few at a time.
"""

from __future__ import annotations

import builtins
import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

import redis

from aicm_tasks.broker import scripts
from aicm_tasks.broker.keys import Keys
from aicm_tasks.broker.messages import encode
from aicm_tasks.errors import AmbiguousDeadLetterIdError, DeadLetterNotFoundError

#: Entries read per round trip when scanning the store.
PAGE = 500

#: Ids an ambiguous prefix's error lists; the scan stops at one more.
CANDIDATES_SHOWN = 5

#: Characters that mean something in a Redis glob pattern (MATCH), escaped in a prefix.
_GLOB_SPECIAL = frozenset("*?[]\\")


@dataclass(frozen=True, slots=True)
class Selection:
    """Which dead letters an operation applies to: ids, or filters, or all.

    Filters combine (reason AND service_key). An empty selection selects nothing,
    so a destructive command never applies to everything by accident.
    """

    ids: tuple[str, ...] = ()
    reason: str | None = None
    service_key: str | None = None
    all: bool = False

    @property
    def is_empty(self) -> bool:
        return not (self.ids or self.reason or self.service_key or self.all)

    def matches(self, entry: dict[str, Any]) -> bool:
        if self.reason is not None and entry.get("reason") != self.reason:
            return False
        return self.service_key is None or entry.get("service_key") == self.service_key


class DeadLetterStore:
    """Operations on the dead letters of one aicm-tasks deployment."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.client = client
        self.keys = keys
        self._replay = client.register_script(scripts.source("replay"))
        self._purge = client.register_script(scripts.source("purge"))

    def count(self) -> int:
        """How many dead letters are stored."""
        return int(self.client.zcard(self.keys.dlq_index))

    def stats(self) -> dict[str, Any]:
        """Totals by reason and by service key, and the oldest/newest failure times."""
        by_reason: dict[str, int] = {}
        by_service: dict[str, int] = {}
        total = 0
        for entry in self.iter_entries(Selection(all=True)):
            total += 1
            reason = str(entry.get("reason"))
            by_reason[reason] = by_reason.get(reason, 0) + 1
            service = str(entry.get("service_key"))
            by_service[service] = by_service.get(service, 0) + 1
        oldest = self.client.zrange(self.keys.dlq_index, 0, 0, withscores=True)
        newest = self.client.zrange(self.keys.dlq_index, -1, -1, withscores=True)
        return {
            "total": total,
            "by_reason": dict(sorted(by_reason.items())),
            "by_service_key": dict(sorted(by_service.items())),
            "oldest_failure_at": oldest[0][1] if oldest else None,
            "newest_failure_at": newest[0][1] if newest else None,
        }

    def get(self, dead_letter_id: str) -> dict[str, Any]:
        """One entry by id; raises :class:`DeadLetterNotFoundError`."""
        raw = self.client.hget(self.keys.dlq, dead_letter_id)
        if raw is None:
            raise DeadLetterNotFoundError(f"no dead letter with id {dead_letter_id!r}")
        return _load(raw)

    def resolve(self, id_or_prefix: str) -> str:
        """The full id of the one dead letter whose id is, or begins with, ``id_or_prefix``.

        An exact id wins even when it also begins others. Raises
        :class:`DeadLetterNotFoundError` when none matches and
        :class:`AmbiguousDeadLetterIdError` (listing a few) when several do.
        Cost: one HEXISTS, then one ZSCAN pass over the index that stops at
        ``CANDIDATES_SHOWN + 1`` matches; memory holds only the matches.
        """
        if not id_or_prefix:
            raise DeadLetterNotFoundError("give a response_id or the start of one")
        if self.client.hexists(self.keys.dlq, id_or_prefix):
            return id_or_prefix
        pattern = glob_escape(id_or_prefix) + "*"
        found: set[str] = set()  # ZSCAN may return a member twice while Redis rehashes
        for member, _score in self.client.zscan_iter(
            self.keys.dlq_index, match=pattern, count=PAGE
        ):
            found.add(member.decode() if isinstance(member, bytes) else str(member))
            if len(found) > CANDIDATES_SHOWN:
                break
        if not found:
            raise DeadLetterNotFoundError(
                f"no dead letter has an id that is or begins with {id_or_prefix!r}"
            )
        if len(found) > 1:
            shown = sorted(found)[:CANDIDATES_SHOWN]
            count = f"more than {CANDIDATES_SHOWN}" if len(found) > CANDIDATES_SHOWN else len(found)
            raise AmbiguousDeadLetterIdError(
                f"{id_or_prefix!r} begins {count} dead letter ids ({', '.join(shown)}"
                f"{', ...' if len(found) > CANDIDATES_SHOWN else ''}): give more of the id",
                tuple(shown),
            )
        return found.pop()

    def iter_entries(self, selection: Selection) -> Iterator[dict[str, Any]]:
        """Selected entries, oldest failure first."""
        if selection.ids:
            for dead_letter_id in selection.ids:
                raw = self.client.hget(self.keys.dlq, dead_letter_id)
                if raw is not None and selection.matches(entry := _load(raw)):
                    yield entry
            return
        if selection.is_empty:
            return
        start = 0
        while True:
            ids: builtins.list[Any] = builtins.list(
                self.client.zrange(self.keys.dlq_index, start, start + PAGE - 1)
            )
            if not ids:
                return
            for raw in self.client.hmget(self.keys.dlq, ids):
                if raw is not None and selection.matches(entry := _load(raw)):
                    yield entry
            start += PAGE

    def list(
        self, selection: Selection, *, limit: int | None = None
    ) -> builtins.list[dict[str, Any]]:
        """Selected entries, oldest first, at most ``limit``."""
        entries: list[dict[str, Any]] = []
        for entry in self.iter_entries(selection):
            if limit is not None and len(entries) >= limit:
                break
            entries.append(entry)
        return entries

    def replay(self, selection: Selection, *, dry_run: bool = False) -> builtins.list[str]:
        """Publish the selected records again, identical (same response_id), and
        remove their entries; returns the replayed ids. A record that fails again
        comes back with its attempts counted."""
        replayed: builtins.list[str] = []
        for entry in builtins.list(self.iter_entries(selection)):
            message = replay_message(entry)
            if message is None:
                continue
            if dry_run:
                replayed.append(entry["id"])
                continue
            keys = [self.keys.dlq, self.keys.dlq_index, self.keys.queue]
            if self._replay(keys=keys, args=[entry["id"], message]):
                replayed.append(entry["id"])
        return replayed

    def purge(self, selection: Selection) -> int:
        """Delete the selected entries for good; returns how many were removed."""
        ids: builtins.list[str] = [entry["id"] for entry in self.iter_entries(selection)]
        removed = 0
        for start in range(0, len(ids), PAGE):
            chunk = ids[start : start + PAGE]
            removed += int(self._purge(keys=[self.keys.dlq, self.keys.dlq_index], args=chunk))
        return removed

    def export(self, selection: Selection, out: TextIO) -> int:
        """Write the selected entries as JSON Lines; returns how many."""
        written = 0
        for entry in self.iter_entries(selection):
            out.write(json.dumps(entry, ensure_ascii=False, separators=(",", ":")) + "\n")
            written += 1
        return written


def replay_message(entry: dict[str, Any]) -> bytes | None:
    """The broker message that republishes a dead letter's record unchanged.

    The retry count starts again; attempts, the first failure time and the
    API-key alias carry over. ``enqueued_at`` is the replay's time (this host's
    clock), so status ages the record from its replay, not from its usage.
    Returns None for an entry that holds no record (an unreadable message).
    """
    record = entry.get("record")
    if not isinstance(record, dict):
        return None
    body = json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode()
    meta = {
        "attempts": entry.get("attempts", 0),
        "retries": 0,
        "replays": int(entry.get("replays", 0)) + 1,
        "first_failure_at": entry.get("first_failure_at"),
        "enqueued_at": round(time.time(), 3),
    }
    if entry.get("api_key_alias") is not None:
        meta["api_key_alias"] = entry["api_key_alias"]
    return encode(body, meta)


def glob_escape(text: str) -> str:
    """``text`` as a Redis MATCH pattern that matches only itself."""
    return "".join("\\" + char if char in _GLOB_SPECIAL else char for char in text)


def _load(raw: bytes | str) -> dict[str, Any]:
    value = json.loads(raw)
    if not isinstance(value, dict):
        raise ValueError("dead-letter entry is not a JSON object")
    return value


def selection_of(
    ids: Sequence[str] = (),
    reason: str | None = None,
    service_key: str | None = None,
    all: bool = False,
) -> Selection:
    """Build a :class:`Selection` from command-line style arguments."""
    return Selection(tuple(ids), reason, service_key, all)
