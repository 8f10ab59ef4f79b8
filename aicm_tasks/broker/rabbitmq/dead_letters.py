"""The dead-letter store on RabbitMQ: the stream ``<queue>.dead_letters``, folded.

Same interface and meaning as :class:`aicm_tasks.broker.dead_letters.DeadLetterStore`
(``aicm-tasks dlq`` picks one or the other). Why a stream, and the events it
holds, are in :mod:`.events` and ``docs/how-it-works.md``: the store's state is
the fold of the log (:func:`~.events.fold_dead_letters`): an id's last ``dead``
event unless a later ``replayed`` or ``purged`` names it.

**Memory.** A fold over full entries would hold every live record in memory
(about 1 KB each). The fold here is over a compact *index*: per live id, the
offset of its ``dead`` event, its reason, service key and failure time (about
200 bytes). ``count``, ``stats``, ``resolve`` and ``purge`` need only the
index (one pass over the stream); entries are read in a second pass from the
first selected offset to the last, each parsed and handed on one at a time
(``list``, ``export``, ``replay``); ``get`` reads the one message at its
offset. Cost: a read of the whole log per command: 4,000-9,900 events/s
measured on this loaded machine, 10-25 s for 100,000 (``docs/design/rabbitmq.md``).

Every read ends at a mark it appends (:mod:`.streams`), so a command sees
every event confirmed before it began.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, TextIO

import amqp

from aicm_tasks.broker.dead_letters import CANDIDATES_SHOWN, Selection, replay_message
from aicm_tasks.broker.rabbitmq.confirms import ConfirmedPublishes
from aicm_tasks.broker.rabbitmq.connection import close_quietly, open_connection
from aicm_tasks.broker.rabbitmq.events import (
    DEAD,
    PURGED,
    REPLAYED,
    fold_dead_letters,
    settled_event,
)
from aicm_tasks.broker.rabbitmq.names import RabbitNames
from aicm_tasks.broker.rabbitmq.streams import StreamReader, stream_exists
from aicm_tasks.errors import AmbiguousDeadLetterIdError, DeadLetterNotFoundError

#: Records replayed per confirm wait, and ids named by one ``replayed``/``purged``
#: event (~40 bytes an id: a 40 KB event).
PAGE = 1000
#: Socket and confirm waits of the operator commands, in seconds.
DEFAULT_TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class Indexed:
    """What the index keeps of a live dead letter: where its entry is, and its filters."""

    offset: int
    reason: str | None
    service_key: str | None
    failed_at: float | None

    def matches(self, selection: Selection) -> bool:
        return selection.matches({"reason": self.reason, "service_key": self.service_key})


class RabbitDeadLetterStore:
    """The dead letters of one deployment on RabbitMQ (``url``, names from ``AICM_QUEUE``)."""

    def __init__(
        self, url: str, names: RabbitNames, *, timeout_s: float = DEFAULT_TIMEOUT_S
    ) -> None:
        self.url = url
        self.names = names
        self.timeout_s = timeout_s
        self._index: dict[str, Indexed] | None = None

    # -- reading -------------------------------------------------------------------
    def index(self) -> dict[str, Indexed]:
        """Live id -> :class:`Indexed`, in stream order (oldest failure first); read
        once per store (one CLI command), again after a replay or purge."""
        if self._index is None:
            with self._connection() as connection:
                self._index = self._read_index(connection)
        return self._index

    def _read_index(self, connection: amqp.Connection) -> dict[str, Indexed]:
        if not stream_exists(connection, self.names.dead_letters):
            return {}  # no worker declared the topology yet: nothing was dead-lettered
        reader = StreamReader(connection, self.names.dead_letters, timeout_s=self.timeout_s)
        try:
            folded = fold_dead_letters(_compact(reader.to_end()))
        finally:
            reader.close()
        return {
            dead_id: Indexed(
                offset=int(entry["offset"]),
                reason=entry.get("reason"),
                service_key=entry.get("service_key"),
                failed_at=entry.get("at"),
            )
            for dead_id, entry in folded.items()
        }

    def count(self) -> int:
        """How many dead letters are stored."""
        return len(self.index())

    def stats(self) -> dict[str, Any]:
        """Totals by reason and by service key, and the oldest/newest failure times."""
        by_reason: dict[str, int] = {}
        by_service: dict[str, int] = {}
        times: builtins.list[float] = []
        for indexed in self.index().values():
            reason, service = str(indexed.reason), str(indexed.service_key)
            by_reason[reason] = by_reason.get(reason, 0) + 1
            by_service[service] = by_service.get(service, 0) + 1
            if indexed.failed_at is not None:
                times.append(float(indexed.failed_at))
        return {
            "total": sum(by_reason.values()),
            "by_reason": dict(sorted(by_reason.items())),
            "by_service_key": dict(sorted(by_service.items())),
            "oldest_failure_at": min(times) if times else None,
            "newest_failure_at": max(times) if times else None,
        }

    def get(self, dead_letter_id: str) -> dict[str, Any]:
        """One entry by id, read at its offset; raises :class:`DeadLetterNotFoundError`."""
        indexed = self.index().get(dead_letter_id)
        if indexed is None:
            raise DeadLetterNotFoundError(f"no dead letter with id {dead_letter_id!r}")
        for _, entry in self._entries({dead_letter_id: indexed}):
            return entry
        raise DeadLetterNotFoundError(f"no dead letter with id {dead_letter_id!r}")

    def resolve(self, id_or_prefix: str) -> str:
        """The full id of the one dead letter whose id is, or begins with, ``id_or_prefix``.

        An exact id wins even when it also begins others. Raises
        :class:`DeadLetterNotFoundError` when none matches and
        :class:`AmbiguousDeadLetterIdError` (listing a few) when several do.
        """
        if not id_or_prefix:
            raise DeadLetterNotFoundError("give a response_id or the start of one")
        index = self.index()
        if id_or_prefix in index:
            return id_or_prefix
        found = sorted(dead_id for dead_id in index if dead_id.startswith(id_or_prefix))
        if not found:
            raise DeadLetterNotFoundError(
                f"no dead letter has an id that is or begins with {id_or_prefix!r}"
            )
        if len(found) > 1:
            shown = found[:CANDIDATES_SHOWN]
            more = len(found) > CANDIDATES_SHOWN
            count = f"more than {CANDIDATES_SHOWN}" if more else len(found)
            raise AmbiguousDeadLetterIdError(
                f"{id_or_prefix!r} begins {count} dead letter ids ({', '.join(shown)}"
                f"{', ...' if more else ''}): give more of the id",
                tuple(shown),
            )
        return found[0]

    def selected(self, selection: Selection) -> dict[str, Indexed]:
        """The index of the selected dead letters, oldest first."""
        index = self.index()
        if selection.ids:
            picked = {i: index[i] for i in dict.fromkeys(selection.ids) if i in index}
            return {i: x for i, x in picked.items() if x.matches(selection)}
        if selection.is_empty:
            return {}
        return {i: x for i, x in index.items() if x.matches(selection)}

    def iter_entries(self, selection: Selection) -> Iterator[dict[str, Any]]:
        """Selected entries, oldest failure first (stream order; ids in the order given)."""
        chosen = self.selected(selection)
        if selection.ids:
            # The order asked for, as on Redis; each read at its own offset.
            for dead_id in chosen:
                yield self.get(dead_id)
            return
        for _, entry in self._entries(chosen):
            yield entry

    def list(
        self, selection: Selection, *, limit: int | None = None
    ) -> builtins.list[dict[str, Any]]:
        """Selected entries, oldest first, at most ``limit``."""
        entries: builtins.list[dict[str, Any]] = []
        for entry in self.iter_entries(selection):
            if limit is not None and len(entries) >= limit:
                break
            entries.append(entry)
        return entries

    def export(self, selection: Selection, out: TextIO) -> int:
        """Write the selected entries as JSON Lines; returns how many."""
        written = 0
        for entry in self.iter_entries(selection):
            out.write(json.dumps(entry, ensure_ascii=False, separators=(",", ":")) + "\n")
            written += 1
        return written

    # -- changing --------------------------------------------------------------------
    def replay(self, selection: Selection, *, dry_run: bool = False) -> builtins.list[str]:
        """Publish the selected records again, identical (same response_id), to the
        record queue, confirmed; then append one ``replayed`` event (confirmed) per
        page. Returns the replayed ids. A crash between the two leaves the entry
        listed: a second replay sends a duplicate ``response_id`` (which the
        contract allows), never a loss."""
        chosen = self.selected(selection)
        replayed: builtins.list[str] = []
        with self._connection() as connection:
            publishes = None if dry_run else ConfirmedPublishes(connection.channel())
            page: dict[int, str] = {}
            for dead_id, entry in self._entries(chosen, connection):
                message = replay_message(entry)
                if message is None:
                    continue  # an unreadable message holds no record to send
                if publishes is None:
                    replayed.append(dead_id)
                    continue
                page[publishes.publish(message, routing_key=self.names.queue)] = dead_id
                if len(page) >= PAGE:
                    replayed += self._settle_replayed(publishes, page)
                    page = {}
            if publishes is not None and page:
                replayed += self._settle_replayed(publishes, page)
        if not dry_run:
            self._index = None
        return replayed

    def _settle_replayed(
        self, publishes: ConfirmedPublishes, page: dict[int, str]
    ) -> builtins.list[str]:
        """Wait for a page of replays; append a ``replayed`` event naming those the
        queue took. A refused record stays listed (its entry is not settled)."""
        refused = publishes.wait(self.timeout_s)
        taken = [dead_id for tag, dead_id in page.items() if tag not in refused]
        if taken:
            self._append(publishes, settled_event(REPLAYED, taken, round(time.time(), 3)))
        return taken

    def purge(self, selection: Selection) -> int:
        """Remove the selected entries from the store; returns how many.

        Logical: one ``purged`` event (confirmed) per page of ids. The bytes stay
        until retention drops their segment (a stream cannot delete a message)."""
        ids = builtins.list(self.selected(selection))
        if not ids:
            return 0
        with self._connection() as connection:
            publishes = ConfirmedPublishes(connection.channel())
            for start in range(0, len(ids), PAGE):
                chunk = ids[start : start + PAGE]
                publishes.publish(
                    settled_event(PURGED, chunk, round(time.time(), 3)),
                    routing_key=self.names.dead_letters,
                )
                if publishes.wait(self.timeout_s):
                    raise amqp.exceptions.NotFound(
                        f"the stream {self.names.dead_letters} refused a purge: "
                        f"{start} of {len(ids)} purged"
                    )
        self._index = None
        return len(ids)

    # -- helpers -----------------------------------------------------------------------
    def _append(self, publishes: ConfirmedPublishes, event: bytes) -> None:
        publishes.publish(event, routing_key=self.names.dead_letters)
        if publishes.wait(self.timeout_s):
            raise amqp.exceptions.NotFound(f"the stream {self.names.dead_letters} refused an event")

    def _entries(
        self, chosen: dict[str, Indexed], connection: amqp.Connection | None = None
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        """``(id, entry)`` of the chosen dead letters, in stream order: one pass from
        the first chosen offset to the last, parsing only the chosen events."""
        if not chosen:
            return
        wanted = {indexed.offset: dead_id for dead_id, indexed in chosen.items()}
        with contextlib.ExitStack() as stack:
            if connection is None:
                connection = stack.enter_context(self._connection())
            reader = StreamReader(
                connection, self.names.dead_letters, min(wanted), timeout_s=self.timeout_s
            )
            stack.callback(reader.close)
            last = max(wanted)
            for offset, event in reader.until(last):
                dead_id = wanted.get(offset)
                if dead_id is not None and isinstance(event.get("entry"), dict):
                    yield dead_id, event["entry"]

    @contextlib.contextmanager
    def _connection(self) -> Iterator[amqp.Connection]:
        connection = open_connection(self.url, timeout_s=self.timeout_s)
        try:
            yield connection
        finally:
            close_quietly(connection)


def _compact(
    events: Iterator[tuple[int | None, dict[str, Any]]],
) -> Iterator[dict[str, Any]]:
    """Events for the fold with each ``dead`` entry cut to what the index keeps."""
    for offset, event in events:
        if event.get("event") == DEAD:
            entry = event.get("entry")
            if offset is None or not isinstance(entry, dict):
                continue
            yield {
                "event": DEAD,
                "id": event.get("id"),
                "entry": {
                    "offset": offset,
                    "reason": entry.get("reason"),
                    "service_key": entry.get("service_key"),
                    "at": event.get("at"),
                },
            }
        else:
            yield event
