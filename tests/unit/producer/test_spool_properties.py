"""A state machine over the spool: whatever the order of appends, drains (ok or failing
midway), reopenings and size limits, no accepted record is ever lost."""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
import tempfile
from collections import Counter
from pathlib import Path

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from aicm_tasks.errors import SpoolFullError
from aicm_tasks.producer.spool import Spool
from tests.support.spool_sink import BrokerGoneError, Sink, body


class SpoolMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.directory = Path(tempfile.mkdtemp(prefix="aicm-spool-machine-"))
        self.max_bytes = 10**7
        self.spool = Spool(self.directory, max_bytes=self.max_bytes)
        self.accepted: Counter[bytes] = Counter()
        self.pushed: Counter[bytes] = Counter()
        self.next = 0

    def teardown(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)

    def _spooled(self) -> Counter[bytes]:
        """What the spool holds, read by SQL so that looking changes nothing."""
        with sqlite3.connect(self.spool.path) as conn:
            rows = conn.execute("SELECT message FROM records").fetchall()
        return Counter(bytes(m) for (m,) in rows)

    @rule(count=st.integers(1, 30))
    def append(self, count: int) -> None:
        for _ in range(count):
            message = body(self.next)
            self.next += 1
            try:
                self.spool.append(message)
            except SpoolFullError:
                return  # refused, so not accepted
            self.accepted[message] += 1

    @rule()
    def drain_ok(self) -> None:
        sink = Sink()
        self.spool.drain(sink)
        self.pushed.update(sink.pushed)

    @rule(after=st.integers(0, 40))
    def drain_failing_midway(self, after: int) -> None:
        sink = Sink(fail_after=after)
        with contextlib.suppress(BrokerGoneError):
            self.spool.drain(sink)
        self.pushed.update(sink.pushed)

    @rule()
    def reopen(self) -> None:
        """A new process (or a forked child) opens the same spool afresh."""
        self.spool = Spool(self.directory, max_bytes=self.max_bytes)

    @rule(limit=st.sampled_from([64 * 1024, 128 * 1024, 10**7]))
    def size_limit(self, limit: int) -> None:
        self.max_bytes = limit
        self.spool = Spool(self.directory, max_bytes=limit)

    @invariant()
    def nothing_accepted_is_lost(self) -> None:
        if not self.spool.path.exists():
            assert not self.accepted
            return
        held = self._spooled() + self.pushed
        assert not (self.accepted - held), "accepted records neither spooled nor pushed"
        assert not (self._spooled() - self.accepted), "a record spooled twice or never accepted"


SpoolMachine.TestCase.settings = settings(max_examples=40, stateful_step_count=25, deadline=None)
test_the_spool_never_loses_an_accepted_record = SpoolMachine.TestCase
