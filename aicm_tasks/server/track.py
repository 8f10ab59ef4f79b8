"""What ``POST /track`` does with a request body, apart from HTTP: parse, answer, store.

Plain functions over bytes, a :class:`~aicm_tasks.server.catalog.ServiceCatalog`,
a :class:`~aicm_tasks.server.pricing.PriceBook` and an
:class:`~aicm_tasks.server.store.EventStore`, so the per-record rules are
tested without a server. ``app.py`` maps :class:`TrackRequestError` to a status.

Per-record rules, in order:

1. a record that fails :func:`~aicm_tasks.server.validation.validate_record`
   answers ``error`` with the reasons. If it carries no string ``response_id``
   there is nothing a client could match the answer to, so it gets no result at
   all (it still counts in the ``errors`` counter; the contract says a missing
   result means "not delivered", which is the truth);
2. a valid record whose service key the catalog does not know answers
   ``service_key_unknown`` and is not stored;
3. a record whose token counts cannot be read (``usage.py``) or that the
   catalog refuses to price (cached tokens above input) answers ``error``;
4. every other record is stored (once per response_id, with its tokens and
   cost) and answers ``completed`` with its ``cost_events`` when the catalog
   prices its model, or ``queued`` when its service key was only learned
   (no price): duplicates included, since a retry of a delivered record must
   succeed.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from aicm_tasks.server.catalog import ServiceCatalog
from aicm_tasks.server.pricing import Cost, PriceBook
from aicm_tasks.server.store import EventStore
from aicm_tasks.server.usage import TokenCounts, UsageError, token_counts
from aicm_tasks.server.validation import validate_record

logger = logging.getLogger(__name__)

#: The contract's limit on records in one request.
MAX_RECORDS_PER_REQUEST = 1000

#: Statuses of the contract this server answers with.
STATUS_QUEUED = "queued"
STATUS_COMPLETED = "completed"
STATUS_SERVICE_KEY_UNKNOWN = "service_key_unknown"
STATUS_ERROR = "error"


class TrackRequestError(ValueError):
    """The request as a whole is refused; ``status_code`` is the HTTP status to answer."""

    def __init__(self, status_code: int, detail: str) -> None:
        self.status_code = status_code
        self.detail = detail
        super().__init__(detail)


def parse_batch(body: bytes) -> list[Any]:
    """Return the ``tracked`` list of a request body, or raise :class:`TrackRequestError`.

    400 if the body is not JSON or not ``{"tracked": [...]}``; 422 if it holds
    more than :data:`MAX_RECORDS_PER_REQUEST` records.
    """
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise TrackRequestError(400, f"request body is not JSON: {exc}") from None
    if not isinstance(document, dict) or not isinstance(document.get("tracked"), list):
        raise TrackRequestError(400, 'request body must be a JSON object {"tracked": [...]}')
    tracked: list[Any] = document["tracked"]
    if len(tracked) > MAX_RECORDS_PER_REQUEST:
        raise TrackRequestError(
            422,
            f"{len(tracked)} records in one request; at most "
            f"{MAX_RECORDS_PER_REQUEST} are accepted, split the batch",
        )
    return tracked


def unknown_service_message(service_key: str) -> str:
    """The contract's error text for a service key the server does not recognise."""
    return f"Service key '{service_key}' is not recognized. Event queued for review."


def answer_batch(
    tracked: list[Any], *, catalog: ServiceCatalog, prices: PriceBook, store: EventStore
) -> list[dict[str, Any]]:
    """Answer each record per the module's rules, store the accepted ones, return the results."""
    results: list[dict[str, Any]] = []
    accepted: list[dict[str, Any]] = []
    tokens: list[TokenCounts] = []
    costs: list[Cost | None] = []
    unknown = errors = 0
    for record in tracked:
        problems = validate_record(record)
        if problems:
            errors += 1
            response_id = record.get("response_id") if isinstance(record, dict) else None
            if isinstance(response_id, str):
                results.append(
                    {"response_id": response_id, "status": STATUS_ERROR, "errors": problems}
                )
            continue
        service_key = record["service_key"]
        if not catalog.knows(service_key):
            unknown += 1
            results.append(
                {
                    "response_id": record["response_id"],
                    "status": STATUS_SERVICE_KEY_UNKNOWN,
                    "errors": [unknown_service_message(service_key)],
                }
            )
            continue
        match = catalog.resolve(service_key)
        try:
            counts = token_counts(record["payload"])
            cost = None if match is None else prices.cost(match, counts, float(record["timestamp"]))
        except (UsageError, ValueError) as exc:
            # genai-prices' own refusals read "Invalid usage data: ...".
            message = str(exc) if isinstance(exc, UsageError) else f"payload: {exc}"
            errors += 1
            results.append(
                {"response_id": record["response_id"], "status": STATUS_ERROR, "errors": [message]}
            )
            continue
        accepted.append(record)
        tokens.append(counts)
        costs.append(cost)
        if cost is None:
            results.append({"response_id": record["response_id"], "status": STATUS_QUEUED})
        else:
            results.append(
                {
                    "response_id": record["response_id"],
                    "status": STATUS_COMPLETED,
                    "cost_events": cost.cost_events(service_key, counts),
                }
            )
    new = store.add_batch(
        accepted,
        tokens=tokens,
        costs=costs,
        not_stored={"unknown_service": unknown, "errors": errors},
    )
    logger.debug(
        "track: %d records, %d stored, %d duplicates, %d service_key_unknown, %d errors",
        len(tracked),
        sum(new),
        len(new) - sum(new),
        unknown,
        errors,
    )
    return results


def handle_track_body(
    body: bytes, *, catalog: ServiceCatalog, prices: PriceBook, store: EventStore
) -> dict[str, Any]:
    """Parse a ``POST /track`` body and return the response document ``{"results": [...]}``."""
    return {"results": answer_batch(parse_batch(body), catalog=catalog, prices=prices, store=store)}
