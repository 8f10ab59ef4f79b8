"""The ledger both storages keep: event rows, daily rollups, counters, and the reads.

:class:`EventStore` is the interface and everything the two storages share
(``sqlite_store.py``, ``postgres_store.py``); each writes a batch its own way
(:meth:`EventStore._insert`). Their tables are described once in
:mod:`aicm_tasks.server.schema`; :func:`aicm_tasks.server.store.open_store`
picks a storage. Nothing here imports a storage, so the arrows point one way:
``store`` -> storages -> ``ledger`` and ``schema``.

Every new event updates, in the same transaction, a row of ``daily_rollups``
per (UTC day of the record's timestamp, service key, customer key): requests,
tokens and cost. Cost reports read those rows, never the events, so a month's
report reads at most 31 x services x customers rows however many events there
are (``bench/ledger.py`` measures it). Costs are whole nano-dollars
(``pricing.py``), so sums are exact in either database.
"""

from __future__ import annotations

import abc
import functools
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, ClassVar

from aicm_tasks.server.pricing import Cost
from aicm_tasks.server.schema import COUNTERS, ROLLUP_KEY_COLUMNS, ROLLUP_SUMS
from aicm_tasks.usage import TokenCounts, UsageError, token_counts

#: Counters of records answered without being stored, which callers report themselves.
NOT_STORED_COUNTERS = ("unknown_service", "errors")
#: Largest page ``list_events`` returns.
MAX_LIST_LIMIT = 1000

EventRow = tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class RollupRow:
    """Requests, tokens and cost of one UTC day, service key and customer key."""

    day: str  # YYYY-MM-DD
    service_key: str
    customer_key: str | None
    requests: int
    input_tokens: int
    output_tokens: int
    cached_input_tokens: int
    reasoning_tokens: int
    cost_nano_usd: int


#: Columns a rollup query may group by.
ROLLUP_KEYS = ROLLUP_KEY_COLUMNS


@functools.lru_cache(maxsize=4096)
def _day_name(day_number: int) -> str:
    return datetime.fromtimestamp(day_number * 86400, tz=timezone.utc).strftime("%Y-%m-%d")


def utc_day(timestamp_s: float) -> str:
    """The UTC calendar day of an epoch timestamp, ``YYYY-MM-DD``."""
    # Epoch days are whole 86,400 s in UTC (no leap seconds in POSIX time).
    return _day_name(int(timestamp_s // 86400))


def _make_dumps() -> Callable[[Any], str]:
    """A compact JSON encoder for payloads: smaller rows mean fewer pages per batch."""
    encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
    make_c_encoder = getattr(json.encoder, "c_make_encoder", None)
    if make_c_encoder is None:  # no C accelerator (PyPy): the public path
        return encoder.encode
    # JSONEncoder.encode builds a new C encoder on every call, half the cost of
    # encoding a small payload; build it once. markers=None skips the cycle check:
    # records come from json.loads, which cannot produce cycles.
    c_encoder = make_c_encoder(
        None, encoder.default, json.encoder.encode_basestring, None, ":", ",", False, False, True
    )

    def dumps(obj: Any) -> str:
        return "".join(c_encoder(obj, 0))

    return dumps


_dumps = _make_dumps()


def event_rows(
    records: Sequence[Mapping[str, Any]],
    tokens: Sequence[TokenCounts] | None,
    costs: Sequence[Cost | None] | None,
) -> list[EventRow]:
    """One row per valid contract record, in :data:`EVENT_COLUMNS` order.

    ``tokens`` and ``costs`` run parallel to ``records``; without ``tokens`` they
    are read from each payload (a malformed payload counts zero tokens).
    """
    received_at = time.time()
    if tokens is None:
        tokens = [_counts_or_zero(record["payload"]) for record in records]
    if costs is None:
        costs = [None] * len(records)
    dumps = _dumps
    # One comprehension, no per-record appends or index look-ups (~0.3 µs a record).
    return [
        (
            record["response_id"],
            record["service_key"],
            record.get("customer_key"),
            float(record["timestamp"]),
            dumps(record["payload"]),
            None if (context := record.get("context")) is None else dumps(context),
            received_at,
            counts.input_tokens,
            counts.output_tokens,
            counts.cached_input_tokens,
            counts.cache_write_tokens,
            counts.reasoning_tokens,
            None if cost is None else cost.nano_usd,
            None if cost is None else cost.catalog_version,
        )
        for record, counts, cost in zip(records, tokens, costs, strict=True)
    ]


def _counts_or_zero(payload: Any) -> TokenCounts:
    try:
        return token_counts(payload)
    except UsageError:  # a malformed payload counts zero tokens
        return TokenCounts()


#: Rollup increments being summed: (epoch day number, service key, customer key
#: or "") -> [requests, input, output, cached input, reasoning tokens, nano-USD].
RollupSums = dict[tuple[int, str, str], list[int]]


def sum_rollups(rows: Sequence[EventRow], sums: RollupSums | None = None) -> RollupSums:
    """Add the rollup increments of event rows to ``sums`` (a new dict if None); return it.

    One entry per (UTC day, service key, customer key) group, its records summed.
    """
    if sums is None:
        sums = {}
    for row in rows:
        # Grouped by the epoch day's number (named once per group, in
        # rollup_upserts): the names sort as the numbers do for every year the
        # contract allows.
        key = (int(row[3] // 86400), row[1], row[2] or "")
        acc = sums.get(key)
        if acc is None:
            sums[key] = [1, row[7], row[8], row[9], row[11], row[12] or 0]
        else:
            acc[0] += 1
            acc[1] += row[7]
            acc[2] += row[8]
            acc[3] += row[9]
            acc[4] += row[11]
            acc[5] += row[12] or 0
    return sums


def rollup_upserts(sums: RollupSums) -> list[tuple[Any, ...]]:
    """The rows for :data:`~aicm_tasks.server.schema.UPSERT_ROLLUP`, one per group, unsorted.

    (SQLite's one writer needs no lock order; PostgreSQL sums and orders its
    rollups in SQL.) No customer is stored as '' (NULLs would never conflict in
    the unique key).
    """
    return [(_day_name(key[0]), key[1], key[2], *acc) for key, acc in sums.items()]


def counter_bumps(stored: int, received: int, extra: Mapping[str, int]) -> list[tuple[int, str]]:
    """``(increment, name)`` pairs for the counters table, by name, zeros left out."""
    bumps = {
        "events": stored,
        "duplicates": received - stored,
        "received": received + sum(extra.values()),
        **extra,
    }
    return [(n, name) for name, n in sorted(bumps.items()) if n]


class EventStore(abc.ABC):
    """Usage events, one per ``response_id``, with persistent counters and daily rollups.

    Safe to share between threads. Use :func:`open_store` to open one.
    """

    #: Name of the storage, for logs and ``/stats``.
    backend: ClassVar[str]
    #: Where the events are: a file path or a URL without its password.
    location: str

    def add_batch(
        self,
        records: Sequence[Mapping[str, Any]],
        *,
        tokens: Sequence[TokenCounts] | None = None,
        costs: Sequence[Cost | None] | None = None,
        not_stored: Mapping[str, int] | None = None,
    ) -> list[bool]:
        """Store valid contract records in one transaction; return which were new.

        A record whose ``response_id`` is already stored (or appeared earlier in
        the same batch) is a duplicate: not stored again, counted in
        ``duplicates``, left out of the rollups. ``tokens`` and ``costs`` run
        parallel to ``records``. ``not_stored`` counts the other records of the
        same request that were answered without being stored, by counter name
        (``{"unknown_service": 2, "errors": 1}``); they count as received too.
        """
        extra = dict(not_stored or {})
        unknown = set(extra) - set(NOT_STORED_COUNTERS)
        if unknown:
            raise ValueError(
                f"unknown counters {sorted(unknown)} in not_stored; allowed: {NOT_STORED_COUNTERS}"
            )
        rows = event_rows(records, tokens, costs)
        if not rows and not any(extra.values()):
            return []
        return self._insert(rows, extra)

    def count(self, counts: Mapping[str, int]) -> None:
        """Add ``counts`` (counter name -> increment) without storing events."""
        self.add_batch((), not_stored=counts)

    def stats(self) -> dict[str, int]:
        """Every counter: ``events`` (unique stored), ``received``, ``duplicates``, ..."""
        values = dict(self._fetch("SELECT name, value FROM counters", ()))
        return {name: int(values.get(name, 0)) for name in COUNTERS}

    def list_events(
        self,
        limit: int = 100,
        offset: int = 0,
        service_key: str | None = None,
        customer_key: str | None = None,
        start_s: float | None = None,
        end_s: float | None = None,
    ) -> list[dict[str, Any]]:
        """Stored events in arrival order, filtered; a page of at most ``limit``.

        ``start_s`` (inclusive) and ``end_s`` (exclusive) bound the record's own
        timestamp, in epoch seconds. Arrival order (not newest first) keeps
        ``offset`` paging stable while new events keep coming. ``limit`` is
        capped at :data:`MAX_LIST_LIMIT`.
        """
        if limit < 0 or offset < 0:
            raise ValueError("limit and offset must not be negative")
        clauses: list[str] = []
        params: list[Any] = []
        for clause, value in (
            ("service_key = ?", service_key),
            ("customer_key = ?", customer_key),
            ("timestamp >= ?", start_s),
            ("timestamp < ?", end_s),
        ):
            if value is not None:
                clauses.append(clause)
                params.append(value)
        where = " WHERE " + " AND ".join(clauses) if clauses else ""
        sql = (
            "SELECT response_id, service_key, customer_key, timestamp, payload, context,"
            " received_at, input_tokens, output_tokens, cached_input_tokens, reasoning_tokens,"
            f" cost_nano_usd, catalog_version FROM events{where} ORDER BY seq LIMIT ? OFFSET ?"
        )
        rows = self._fetch(sql, (*params, min(limit, MAX_LIST_LIMIT), offset))
        return [
            {
                "response_id": row[0],
                "service_key": row[1],
                "customer_key": row[2],
                "timestamp": row[3],
                "payload": json.loads(row[4]),
                "context": None if row[5] is None else json.loads(row[5]),
                "received_at": row[6],
                "input_tokens": row[7],
                "output_tokens": row[8],
                "cached_input_tokens": row[9],
                "reasoning_tokens": row[10],
                "cost": None if row[11] is None else row[11] / 1e9,
                "price_catalog": None if row[12] is None else f"genai-prices {row[12]}",
            }
            for row in rows
        ]

    def rollups(
        self,
        start_day: str,
        end_day: str,
        *,
        customer_key: str | None = None,
        service_key: str | None = None,
        group_by: Sequence[str] = ROLLUP_KEYS,
    ) -> list[RollupRow]:
        """Rollup sums from ``start_day`` to ``end_day`` (``YYYY-MM-DD``, inclusive).

        One row per distinct value of the ``group_by`` columns (a subset of
        :data:`ROLLUP_KEYS`; all three by default: the daily rows themselves),
        summed by the database. Columns not grouped by read ``""`` (``day``,
        ``service_key``) or None (``customer_key``).
        """
        unknown = set(group_by) - set(ROLLUP_KEYS)
        if unknown:
            raise ValueError(f"rollups group by {ROLLUP_KEYS}, not {sorted(unknown)}")
        keys = [key if key in group_by else "''" for key in ROLLUP_KEYS]
        sql = f"SELECT {', '.join(keys)}, " + ", ".join(f"SUM({c})" for c in ROLLUP_SUMS)
        sql += " FROM daily_rollups WHERE day >= ? AND day <= ?"
        params: list[Any] = [start_day, end_day]
        if customer_key is not None:
            sql += " AND customer_key = ?"
            params.append(customer_key)
        if service_key is not None:
            sql += " AND service_key = ?"
            params.append(service_key)
        if group_by:
            columns = [key for key in ROLLUP_KEYS if key in group_by]
            sql += f" GROUP BY {', '.join(columns)} ORDER BY {', '.join(columns)}"
        return [
            RollupRow(row[0], row[1], row[2] or None, *(int(v or 0) for v in row[3:]))
            for row in self._fetch(sql, params)
            if row[3]  # an empty range sums to one row of NULLs
        ]

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run a read query written with ``?`` placeholders (the SQL both databases speak)."""
        return self._fetch(sql, params)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run one writing statement (``?`` placeholders) in its own transaction.

        Its rows when it has any (``RETURNING``), else ``[]``. For the small
        tables beside the ledger (customers, custom services), never for events.
        """
        return self._execute(sql, params)

    @abc.abstractmethod
    def _execute(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        """Run one statement in its own transaction; its rows, or ``[]`` if it has none."""

    @abc.abstractmethod
    def has(self, response_id: str) -> bool:
        """True if an event with ``response_id`` is stored."""

    @abc.abstractmethod
    def close(self) -> None:
        """Close the connection; the store cannot be used afterwards."""

    @abc.abstractmethod
    def _insert(self, rows: list[EventRow], extra: dict[str, int]) -> list[bool]:
        """Insert the new rows, their rollups and the counters in one transaction."""

    @abc.abstractmethod
    def _fetch(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        """Run a read query written with ``?`` placeholders; all its rows."""

    def __enter__(self) -> EventStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def first_occurrences(rows: Sequence[EventRow], seen: Any = frozenset()) -> list[bool]:
    """For each row, whether it is the first of its response_id here and not in ``seen``."""
    batch_ids: set[str] = set()
    flags = []
    for row in rows:
        response_id = row[0]
        is_new = response_id not in seen and response_id not in batch_ids
        flags.append(is_new)
        if is_new:
            batch_ids.add(response_id)
    return flags
