"""A drain target off the wire: what a spool drain pushed, and a broker that fails midway."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from aicm_tasks.producer.record import build_record


def body(n: int, prefix: str = "r") -> bytes:
    """A record's message with response_id ``<prefix><n>``."""
    return build_record("a::b", {"n": n}, response_id=f"{prefix}{n}", timestamp=1732270000).body


class BrokerGoneError(ConnectionError):
    """The sink's stand-in for a broker that stops answering mid-drain."""


class Sink:
    """Keeps what is pushed (``pushed``) and scheduled (``scheduled``: (due, message)).

    With ``fail_after``, the push that would take the total past that many
    messages raises :class:`BrokerGoneError` after taking the first part of them,
    as a pipelined LPUSH cut by a lost connection does.
    """

    def __init__(self, fail_after: int | None = None) -> None:
        self.pushed: list[bytes] = []
        self.scheduled: list[tuple[float, bytes]] = []
        self.fail_after = fail_after

    def _take(self, count: int) -> int:
        if self.fail_after is None:
            return count
        room = self.fail_after - len(self.pushed) - len(self.scheduled)
        return max(0, min(room, count))

    def push_many(self, messages: Sequence[bytes]) -> None:
        taken = self._take(len(messages))
        self.pushed.extend(messages[:taken])
        if taken < len(messages):
            raise BrokerGoneError("broker gone again")

    def schedule(self, items: Iterable[tuple[float, bytes]]) -> None:
        items = list(items)
        taken = self._take(len(items))
        self.scheduled.extend(items[:taken])
        if taken < len(items):
            raise BrokerGoneError("broker gone again")
