"""Usage limits: what one is, its period, its spend from the ledger, and when it trips.

A limit (the SDK's ``UsageLimitIn``/``UsageLimitOut``) caps the spend of a
scope in a period: a service key, a customer key (the SDK's ``client``), both,
or neither (the whole account), per UTC ``day`` or calendar ``month``. Its
spend is read from the ledger's daily rollups (``store.rollups``), never from
the events, so judging a limit is one small query however much was tracked.

A limit trips when the spend of its scope in its current period reaches its
amount; the trip is an event (``limit_events``) that lasts until the period
ends. :class:`LimitBook` judges the active limits after every ``/track`` batch
that stored a cost, records new trips, hands each to the webhook notifier, and
answers the current set. Thresholds of type ``limit`` are the set the SDK
enforces (``triggered_limits``); an ``alert`` trips and notifies the webhooks
but is not in that set, so it never makes the SDK raise ``UsageLimitExceeded``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from aicm_tasks.server.limit_store import LimitStore, Row
from aicm_tasks.server.signing import LimitSigner
from aicm_tasks.server.store import EventStore

logger = logging.getLogger(__name__)

#: Nano-dollars per dollar: the ledger's unit of cost (``pricing.py``).
NANO_PER_USD = 10**9
#: Namespace of trip event ids: uuid5(limit, period start), the same on every server.
EVENT_NAMESPACE = uuid.UUID("5b1f3c52-8d0e-4a53-9a0c-2f1d7f0b3e11")
#: How long ``/track`` answers reuse the list of active limits before reading it
#: again, in seconds. Reading it per batch cost ~0.36 ms on PostgreSQL here (2%
#: of a 500-record batch at 30,000 records/s); this server's own changes clear
#: it at once, another server's (sharing PostgreSQL) are seen within this delay.
#: Spend is still read per batch: only the limits' definitions are reused.
ACTIVE_LIMITS_TTL_S = 1.0
#: The threshold type the SDK enforces; ``alert`` only notifies.
ENFORCED_THRESHOLD = "limit"


#: Largest limit amount, in USD: its nano-USD must fit the ledger's 64-bit
#: integer column (about 9.2e9 USD); a larger one overflowed there, a 500.
MAX_AMOUNT_USD = 1_000_000_000


def amount_nano_usd(amount: Decimal) -> int:
    """``amount`` (USD) in whole nano-USD, as limits are kept. A positive amount
    under one nano-USD is one, not 0: truncated, it made a limit of 0 that
    tripped at once with nothing spent."""
    nano = int(amount * NANO_PER_USD)
    return 1 if nano == 0 and amount > 0 else nano


class UsageLimitInput(BaseModel):
    """A limit as the SDK's client sends it (``UsageLimitIn``, the same fields)."""

    model_config = ConfigDict(extra="forbid")

    threshold_type: Literal["alert", "limit"]
    #: USD, a number or a decimal string.
    amount: Decimal = Field(ge=0, le=MAX_AMOUNT_USD, allow_inf_nan=False, max_digits=24)
    period: Literal["day", "month"]
    service_key: str | None = Field(default=None, min_length=1, max_length=256)
    client: str | None = Field(default=None, min_length=1, max_length=256)
    team_uuid: str | None = None
    api_key_uuid: str | None = None
    notification_list: list[str] | None = None
    active: bool | None = True

    def row(self, limit_id: str, created_at: float) -> Row:
        """This limit as a row of :data:`~aicm_tasks.server.limit_store.LIMIT_COLUMNS`."""
        return (
            limit_id,
            self.threshold_type,
            amount_nano_usd(self.amount),
            self.period,
            self.service_key,
            self.client,
            self.team_uuid,
            self.api_key_uuid,
            None if self.notification_list is None else json.dumps(self.notification_list),
            0 if self.active is False else 1,
            created_at,
        )


def limit_document(row: Row) -> dict[str, Any]:
    """A limit row as the SDK's ``UsageLimitOut``."""
    return {
        "uuid": row[0],
        "threshold_type": row[1],
        "amount": row[2] / NANO_PER_USD,
        "period": row[3],
        "service": row[4],
        "client": row[5],
        "notification_list": None if row[8] is None else json.loads(row[8]),
        "active": bool(row[9]),
    }


def period_bounds(period: str, now: datetime) -> tuple[date, date, datetime]:
    """The UTC days ``(first, last)`` of the ``period`` holding ``now``, and when it ends."""
    today = now.astimezone(timezone.utc).date()
    if period == "day":
        first = last = today
    else:
        first = today.replace(day=1)
        next_month = (first + timedelta(days=32)).replace(day=1)
        last = next_month - timedelta(days=1)
    end = last + timedelta(days=1)
    return first, last, datetime(end.year, end.month, end.day, tzinfo=timezone.utc)


def _iso(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, tz=timezone.utc).isoformat()


def _scope(row: Row) -> str:
    parts = [f"service {row[4]}" if row[4] else "", f"customer {row[5]}" if row[5] else ""]
    return ", ".join(part for part in parts if part) or "account"


class LimitBook:
    """The active limits of one ledger, judged against its spend.

    ``notify`` is called (from the calling thread; it must not block) with each
    newly recorded trip, as the webhook body's ``data``. ``api_key_id`` is put in
    every trip event as the SDK's ``api_key_id`` (it compares it with the part
    of its API key after the last dot).
    """

    def __init__(
        self,
        *,
        ledger: EventStore,
        limits: LimitStore,
        signer: LimitSigner,
        notify: Callable[[dict[str, Any]], None],
        api_key_id: str | None,
    ) -> None:
        self._ledger = ledger
        self._limits = limits
        self._signer = signer
        self._notify = notify
        self._api_key_id = api_key_id
        self._lock = threading.Lock()
        self._active: tuple[float, list[Row]] | None = None

    def forget_limits(self) -> None:
        """Drop the reused list of active limits: call after changing a limit."""
        with self._lock:
            self._active = None

    def _active_limits(self) -> list[Row]:
        """The active limits, read at most every :data:`ACTIVE_LIMITS_TTL_S`."""
        now = time.monotonic()
        with self._lock:
            if self._active is not None and now - self._active[0] < ACTIVE_LIMITS_TTL_S:
                return self._active[1]
        rows = self._limits.limits(active_only=True)
        with self._lock:
            self._active = (now, rows)
        return rows

    def spend_nano_usd(self, row: Row, now: datetime) -> int:
        """Spend of the limit's scope in its current period, in nano-dollars."""
        first, last, _ = period_bounds(row[3], now)
        sums = self._ledger.rollups(
            first.isoformat(),
            last.isoformat(),
            service_key=row[4],
            customer_key=row[5],
            group_by=(),
        )
        return sum(r.cost_nano_usd for r in sums)

    def answer(self, *, stored_cost: bool, now_s: float | None = None) -> dict[str, Any] | None:
        """The signed ``triggered_limits`` of a ``/track`` answer, judging first if it stored cost.

        One query when no limit is active (the signed empty set is cached);
        otherwise the active limits, their trips, and one rollup sum per limit
        not tripped yet in its period. None (logged) if the limits could not be
        read: the batch is stored already, and its answer must not fail for
        the limits' sake (a 500 would make the worker send it again).
        """
        now_s = time.time() if now_s is None else now_s
        try:
            active = self._active_limits()
            if not active:
                return self._signer.payload([])
            events = self._limits.events(now_s)
            if stored_cost and self._judge(active, events, now_s):
                events = self._limits.events(now_s)
            return self._signer.payload(self._enforced(active, events))
        except Exception:
            logger.exception(
                "usage limits not judged; the /track answer carries no triggered_limits"
            )
            return None

    def judge(self, now_s: float | None = None) -> int:
        """Record a trip for every active limit whose spend reached its amount; count new ones."""
        now_s = time.time() if now_s is None else now_s
        return self._judge(self._limits.limits(active_only=True), self._limits.events(now_s), now_s)

    def _judge(self, active: list[Row], events: list[Row], now_s: float) -> int:
        """Trips of the ``active`` limits not among ``events`` (limits tripped are not re-read)."""
        now = datetime.fromtimestamp(now_s, tz=timezone.utc)
        tripped = {event[0] for event in events}
        new = 0
        for row in active:
            first, _, end = period_bounds(row[3], now)
            event_id = str(uuid.uuid5(EVENT_NAMESPACE, f"{row[0]}/{first.isoformat()}"))
            if event_id in tripped:
                continue
            spend = self.spend_nano_usd(row, now)
            if spend < row[2]:
                continue
            event = (event_id, row[0], first.isoformat(), now_s, end.timestamp())
            # False when another server sharing the database recorded it first:
            # exactly one of them notifies.
            if self._limits.add_event(event):
                new += 1
                logger.warning(
                    "usage limit %s tripped: %s spent %.6f USD this %s, limit %.6f USD",
                    row[0],
                    _scope(row),
                    spend / NANO_PER_USD,
                    row[3],
                    row[2] / NANO_PER_USD,
                )
                self._notify({**self._event(row, event), "current_spend": spend / NANO_PER_USD})
        return new

    def triggered(self, now_s: float | None = None) -> list[dict[str, Any]]:
        """The current trips of active ``limit`` thresholds, as the SDK's events."""
        now_s = time.time() if now_s is None else now_s
        return self._enforced(self._limits.limits(active_only=True), self._limits.events(now_s))

    def signed(self, now_s: float | None = None) -> dict[str, Any]:
        """The ``triggered_limits`` object of the current set, signed (cached per set)."""
        return self._signer.payload(self.triggered(now_s))

    def _enforced(self, active: list[Row], events: list[Row]) -> list[dict[str, Any]]:
        rows = {row[0]: row for row in active}
        return [
            self._event(rows[event[1]], event)
            for event in events
            if event[1] in rows and rows[event[1]][1] == ENFORCED_THRESHOLD
        ]

    def progress(self, now_s: float | None = None) -> list[dict[str, Any]]:
        """Every limit with its spend this period (the SDK's ``UsageLimitProgressOut``)."""
        now = datetime.fromtimestamp(time.time() if now_s is None else now_s, tz=timezone.utc)
        documents = []
        for row in self._limits.limits():
            spend = self.spend_nano_usd(row, now)
            documents.append(
                {
                    **limit_document(row),
                    "current_spend": spend / NANO_PER_USD,
                    "remaining_amount": max(row[2] - spend, 0) / NANO_PER_USD,
                }
            )
        return documents

    def _event(self, row: Row, event: Row) -> dict[str, Any]:
        """A trip as the SDK's triggered-limit event (``config_manager.TriggeredLimit``)."""
        return {
            "event_id": event[0],
            "limit_id": row[0],
            "threshold_type": row[1],
            "amount": row[2] / NANO_PER_USD,
            "period": row[3],
            "limit_context": _scope(row),
            "limit_message": (
                f"{_scope(row)} reached its {row[1]} of {row[2] / NANO_PER_USD:g} USD per {row[3]}"
            ),
            "service_key": row[4],
            "customer_key": row[5],
            "api_key_id": self._api_key_id,
            "triggered_at": _iso(event[3]),
            "expires_at": _iso(event[4]),
        }
