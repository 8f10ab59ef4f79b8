"""The dead-letter store: list, inspect, replay, purge and export dead letters.

Dead letters live in the broker's Redis (written atomically by the worker when
a batch is settled, see :mod:`aicm_tasks.broker.records`): a hash ``<prefix>:dlq`` of
``id -> entry JSON`` and a sorted set ``<prefix>:dlq:index`` of ids by last
failure time. An entry's id is the record's ``response_id``, so a record that
fails again after a replay replaces its own entry, its attempts counted.

An id may be given by a unique prefix, as ``git`` takes commits
(:meth:`DeadLetterStore.resolve`): ZSCAN with a MATCH pattern over the index,
so only matching ids cross the wire and the client holds a few at a time.

With several shards each shard keeps its own dead letters (a batch's are written
with it, in its slot); this store reads them all as one: counts summed, entries
merged oldest first, an id found in whichever shard holds it, a prefix unique
over all shards, and a replayed record returned to its own shard's queue.

A shard whose Redis does not answer is left out of what is read and noted in
:attr:`DeadLetterStore.down` (the CLI shows what the others hold, names it and
exits 1): an id found on another shard is still shown, replayed or purged, but
an id not found, or a prefix (which might also begin an id on that shard),
raises :class:`~aicm_tasks.errors.ShardsDownError` rather than "not found".
"""

from __future__ import annotations

import builtins
import heapq
import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from aicm_tasks.broker import scripts
from aicm_tasks.broker.errors import SHARD_ERRORS
from aicm_tasks.broker.keys import Keys
from aicm_tasks.broker.messages import encode
from aicm_tasks.broker.records import BrokerClient, RecordStore
from aicm_tasks.errors import AmbiguousDeadLetterIdError, DeadLetterNotFoundError, ShardsDownError

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


class _Shard:
    """One shard's dead letters: its client, key names and scripts."""

    def __init__(self, client: BrokerClient, keys: Keys) -> None:
        self.client = client
        self.keys = keys
        self.replay = client.register_script(scripts.source("replay"))
        self.purge = client.register_script(scripts.source("purge"))


class DeadLetterStore:
    """Operations on the dead letters of one aicm-tasks deployment, over all its shards."""

    def __init__(self, client: BrokerClient, keys: Keys) -> None:
        self.client = client
        self.keys = keys
        self.shards = [_Shard(client, keys)]
        #: Shards whose Redis did not answer, by number: their error (several shards only).
        self.down: dict[int, str] = {}

    @classmethod
    def over(cls, stores: Sequence[RecordStore]) -> DeadLetterStore:
        """The dead letters of every shard, read as one store."""
        store = cls(stores[0].client, stores[0].keys)
        store.shards += [_Shard(s.client, s.keys) for s in stores[1:]]
        return store

    def count(self) -> int:
        """How many dead letters are stored."""
        return sum(int(shard.client.zcard(shard.keys.dlq_index)) for shard in self.shards)

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
        oldest: builtins.list[float] = []
        newest: builtins.list[float] = []
        for shard in self.shards:
            first: Any = (
                self._ask(shard, lambda s: s.client.zrange(s.keys.dlq_index, 0, 0, withscores=True))
                or []
            )
            last: Any = (
                self._ask(
                    shard, lambda s: s.client.zrange(s.keys.dlq_index, -1, -1, withscores=True)
                )
                or []
            )
            oldest += [float(score) for _, score in first]
            newest += [float(score) for _, score in last]
        return {
            "total": total,
            "by_reason": dict(sorted(by_reason.items())),
            "by_service_key": dict(sorted(by_service.items())),
            "oldest_failure_at": min(oldest) if oldest else None,
            "newest_failure_at": max(newest) if newest else None,
        }

    def get(self, dead_letter_id: str) -> dict[str, Any]:
        """One entry by id, from whichever shard holds it; raises
        :class:`DeadLetterNotFoundError`, or :class:`ShardsDownError` when it
        is on none of the shards that answered."""
        for shard in self.shards:
            raw = self._ask(shard, lambda s: s.client.hget(s.keys.dlq, dead_letter_id))
            if raw is not None:
                return _load(raw)
        self._not_found_on_live_shards(f"no dead letter with id {dead_letter_id!r}")
        raise DeadLetterNotFoundError(f"no dead letter with id {dead_letter_id!r}")

    def _ask(self, shard: _Shard, command: Any) -> Any:
        """``command(shard)``; with several shards, None when the shard's Redis did
        not answer (noted in :attr:`down`)."""
        if len(self.shards) == 1:
            return command(shard)
        try:
            return command(shard)
        except SHARD_ERRORS as exc:
            self.down[shard.keys.shard] = str(exc) or type(exc).__name__
            return None

    def _not_found_on_live_shards(self, what: str) -> None:
        """Raise :class:`ShardsDownError` when a shard that did not answer may hold ``what``."""
        if self.down:
            raise ShardsDownError(
                f"{what} on the shards that answered; "
                + "; ".join(f"shard {n} did not answer ({why})" for n, why in self.down.items())
                + ": it may be there. Try again once it answers",
                dict(self.down),
            )

    def resolve(self, id_or_prefix: str) -> str:
        """The full id of the one dead letter whose id is, or begins with, ``id_or_prefix``.

        An exact id wins even when it also begins others. Raises
        :class:`DeadLetterNotFoundError` when none matches and
        :class:`AmbiguousDeadLetterIdError` (listing a few) when several do.
        Over several shards the prefix must be unique over all of them; an exact
        id in any shard wins. Cost: one HEXISTS per shard, then one ZSCAN pass
        per shard's index that stops once ``CANDIDATES_SHOWN + 1`` matches are
        found in all; memory holds only the matches.
        """
        if not id_or_prefix:
            raise DeadLetterNotFoundError("give a response_id or the start of one")
        if any(
            self._ask(shard, lambda s: s.client.hexists(s.keys.dlq, id_or_prefix))
            for shard in self.shards
        ):
            return id_or_prefix
        # A prefix unique over the shards that answered may begin an id on one
        # that did not: refused, rather than acting on the wrong record.
        self._not_found_on_live_shards(f"no dead letter has the id {id_or_prefix!r}")
        pattern = glob_escape(id_or_prefix) + "*"
        found: set[str] = set()  # ZSCAN may return a member twice while Redis rehashes
        for shard in self.shards:
            for member, _score in shard.client.zscan_iter(
                shard.keys.dlq_index, match=pattern, count=PAGE
            ):
                found.add(member.decode() if isinstance(member, bytes) else str(member))
                if len(found) > CANDIDATES_SHOWN:
                    break
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
        """Selected entries, oldest failure first (across shards)."""
        for _, entry in self._located(selection):
            yield entry

    def _located(self, selection: Selection) -> Iterator[tuple[_Shard, dict[str, Any]]]:
        """Selected entries with the shard that holds each, oldest failure first."""
        if selection.ids:
            for dead_letter_id in selection.ids:
                for shard in self.shards:
                    raw = self._ask(shard, lambda s: s.client.hget(s.keys.dlq, dead_letter_id))  # noqa: B023 - called at once
                    if raw is not None:
                        if selection.matches(entry := _load(raw)):
                            yield shard, entry
                        break
            return
        if selection.is_empty:
            return
        if len(self.shards) == 1:
            for _, shard, entry in _scan(self.shards[0], 0, selection):
                yield shard, entry
            return
        merged = heapq.merge(
            *(self._scan_live(shard, n, selection) for n, shard in enumerate(self.shards)),
            key=lambda item: item[0],
        )
        for _, shard, entry in merged:
            yield shard, entry

    def _scan_live(
        self, shard: _Shard, number: int, selection: Selection
    ) -> Iterator[tuple[float, _Shard, dict[str, Any]]]:
        """:func:`_scan` of one of several shards, ended (and noted in :attr:`down`)
        when its Redis stops answering."""
        try:
            yield from _scan(shard, number, selection)
        except SHARD_ERRORS as exc:
            self.down[shard.keys.shard] = str(exc) or type(exc).__name__

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
        for shard, entry in builtins.list(self._located(selection)):
            message = replay_message(entry)
            if message is None:
                continue
            if dry_run:
                replayed.append(entry["id"])
                continue
            # Back to its own shard's queue: one script, one slot.
            keys = [shard.keys.dlq, shard.keys.dlq_index, shard.keys.queue]
            if shard.replay(keys=keys, args=[entry["id"], message]):
                replayed.append(entry["id"])
        return replayed

    def purge(self, selection: Selection) -> int:
        """Delete the selected entries for good; returns how many were removed."""
        by_shard: dict[int, builtins.list[str]] = {}
        for shard, entry in self._located(selection):
            by_shard.setdefault(self.shards.index(shard), []).append(entry["id"])
        removed = 0
        for index, ids in by_shard.items():
            shard = self.shards[index]
            for start in range(0, len(ids), PAGE):
                chunk = ids[start : start + PAGE]
                keys = [shard.keys.dlq, shard.keys.dlq_index]
                removed += int(shard.purge(keys=keys, args=chunk))
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


def _scan(
    shard: _Shard, number: int, selection: Selection
) -> Iterator[tuple[float, _Shard, dict[str, Any]]]:
    """One shard's selected entries with their failure times, oldest first, a
    page per round trip."""
    start = 0
    while True:
        page: builtins.list[Any] = builtins.list(
            shard.client.zrange(shard.keys.dlq_index, start, start + PAGE - 1, withscores=True)
        )
        if not page:
            return
        ids = [dead_id for dead_id, _ in page]
        for (_, score), raw in zip(page, shard.client.hmget(shard.keys.dlq, ids), strict=True):
            if raw is not None and selection.matches(entry := _load(raw)):
                yield float(score), shard, entry
        start += PAGE


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
