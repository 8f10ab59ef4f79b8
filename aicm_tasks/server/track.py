"""What ``POST /track`` does with a request body, apart from HTTP: parse, answer, store.

Plain functions over bytes, a :class:`~aicm_tasks.server.catalog.ServiceCatalog`,
a :class:`~aicm_tasks.server.pricing.PriceBook` and an
:class:`~aicm_tasks.server.store.EventStore`, so the per-record rules are
tested without a server. ``app.py`` maps :class:`TrackRequestError` to a status.

Per-record rules, in order:

1. a record that fails :func:`~aicm_tasks.server.validation.validate_and_count`
   (the rules of ``contract.py``, which the call site applies too) answers
   ``error`` with the reasons. If it carries no string ``response_id``
   there is nothing a client could match the answer to, so it gets no result at
   all (it still counts in the ``errors`` counter; the contract says a missing
   result means "not delivered", which is the truth);
2. a valid record whose service key the catalog does not know answers
   ``service_key_unknown`` and is not stored;
3. a record that genai-prices refuses to price answers ``error`` (token
   counts are already checked in step 1, so none is known to);
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

from aicm_tasks.contract import (
    MAX_NESTING_DEPTH,
    MAX_RECORDS_PER_REQUEST,
    STATUS_COMPLETED,
    STATUS_ERROR,
    STATUS_QUEUED,
    STATUS_SERVICE_KEY_UNKNOWN,
)
from aicm_tasks.server.catalog import CatalogMatch, ServiceCatalog
from aicm_tasks.server.pricing import Cost, PriceBook
from aicm_tasks.server.store import EventStore
from aicm_tasks.server.validation import validate_and_count
from aicm_tasks.usage import TokenCounts

logger = logging.getLogger(__name__)

__all__ = [
    "MAX_RECORDS_PER_REQUEST",
    "STATUS_COMPLETED",
    "STATUS_ERROR",
    "STATUS_QUEUED",
    "STATUS_SERVICE_KEY_UNKNOWN",
    "TrackRequestError",
    "answer_batch",
    "handle_track_body",
    "parse_batch",
    "unknown_service_message",
]


class TrackRequestError(ValueError):
    """The request as a whole is refused; ``status_code`` is the HTTP status to answer."""

    def __init__(self, status_code: int, detail: str) -> None:
        self.status_code = status_code
        self.detail = detail
        super().__init__(detail)


def parse_batch(body: bytes) -> list[Any]:
    """Return the ``tracked`` list of a request body, or raise :class:`TrackRequestError`.

    400 if the body is not JSON, nests deeper than Python's parser can follow,
    or is not ``{"tracked": [...]}``; 422 if it holds more than
    :data:`MAX_RECORDS_PER_REQUEST` records.
    """
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise TrackRequestError(400, f"request body is not JSON: {exc}") from None
    except RecursionError:
        # The parser's own limit (about 1,000 levels, less on 3.12+) is far above
        # what a valid record may nest (contract.MAX_NESTING_DEPTH, 32), so such a
        # body is refused whole; records nested between the two answer ``error``.
        raise TrackRequestError(
            400,
            "request body nests too deeply to parse; a record's payload and context "
            f"may nest at most {MAX_NESTING_DEPTH} levels",
        ) from None
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
    """The error text for a service key the server does not recognise.

    Not the hosted API's "Event queued for review.": this server keeps nothing
    for review (the record is not stored) and the worker dead-letters it
    ``service_key_unknown``, so the text says that and what to do.
    """
    return (
        f"Service key '{service_key}' is not recognized: the event was not stored. "
        f"Teach it to the server (PUT /api/v1/services/{service_key}, or "
        "serve --extra-service), then replay the dead letter."
    )


def answer_batch(
    tracked: list[Any], *, catalog: ServiceCatalog, prices: PriceBook, store: EventStore
) -> list[dict[str, Any]]:
    """Answer each record per the module's rules, store the accepted ones, return the results."""
    results: list[dict[str, Any]] = []
    accepted: list[dict[str, Any]] = []
    tokens: list[TokenCounts] = []
    costs: list[Cost | None] = []
    unknown = errors = 0
    # A batch names few service keys (a worker's batch of 500 usually one to a
    # dozen): each is looked up once per batch, not once per record.
    matches: dict[str, tuple[bool, CatalogMatch | None]] = {}
    for record in tracked:
        problems, counts = validate_and_count(record)
        if counts is None:
            errors += 1
            response_id = record.get("response_id") if isinstance(record, dict) else None
            if isinstance(response_id, str):
                results.append(
                    {"response_id": response_id, "status": STATUS_ERROR, "errors": problems}
                )
            continue
        service_key = record["service_key"]
        known = matches.get(service_key)
        if known is None:
            known = matches[service_key] = (
                catalog.knows(service_key),
                catalog.resolve(service_key),
            )
        if not known[0]:
            unknown += 1
            results.append(
                {
                    "response_id": record["response_id"],
                    "status": STATUS_SERVICE_KEY_UNKNOWN,
                    "errors": [unknown_service_message(service_key)],
                }
            )
            continue
        match = known[1]
        try:
            cost = None if match is None else prices.cost(match, counts, float(record["timestamp"]))
        except ValueError as exc:
            # Unreachable for a record validate_and_count passed (contract.py runs
            # the same token reading); kept so a refusal is an answer, never a 500.
            message = f"payload: {exc}"
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
