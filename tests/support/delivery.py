"""One outcome per record from :func:`aicm_tasks.worker.delivery.attempt`, for assertions.

The service never needs delivered records as outcomes (one per record cost a
tenth of the worker's CPU, see ``Attempt``); tests that read every record's
fate do, so the flattening lives here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from aicm_tasks.broker.messages import Item
from aicm_tasks.worker.attempts import Outcome, attempt
from aicm_tasks.worker.outcomes import Fate, Post


def deliver(
    items: Sequence[Item], post: Post | None, aliases: Mapping[str, Post] | None = None
) -> tuple[list[Outcome], int]:
    """:func:`attempt`, as one outcome per item (delivered ones first) and its POSTs."""
    done = attempt(items, post, aliases)
    delivered = [Outcome(item, Fate.DELIVERED, "delivered") for item in done.delivered]
    return delivered + done.failed, done.requests
