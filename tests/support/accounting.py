"""Exact accounting of a run: every published record delivered, dead-lettered or spooled."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from aicm_tasks.broker.dead_letters import Selection
from tests.support.pipeline import Pipeline

#: Where each scenario appends its figures; conftest prints them at the end.
RESULTS_FILE = Path(__file__).resolve().parent.parent / "reliability" / ".results.jsonl"


@dataclass(frozen=True)
class Accounting:
    scenario: str
    published: int
    delivered: int
    dead_lettered: int
    spooled: int
    lost: int
    duplicates: int
    recovery_s: float | None = None


def account(
    pipeline: Pipeline,
    scenario: str,
    published: set[str],
    *,
    spooled: int = 0,
    recovery_s: float | None = None,
) -> Accounting:
    """Compare what was published with what the server and the dead-letter store hold."""
    delivered = pipeline.server.response_ids() & published
    dead = {e["id"] for e in pipeline.dead_letters.list(Selection(all=True))} & published
    lost = len(published - delivered - dead) - spooled
    stats = pipeline.server.stats()
    result = Accounting(
        scenario=scenario,
        published=len(published),
        delivered=len(delivered),
        dead_lettered=len(dead),
        spooled=spooled,
        lost=max(lost, 0),
        duplicates=int(stats.get("duplicates", 0)),
        recovery_s=None if recovery_s is None else round(recovery_s, 2),
    )
    with RESULTS_FILE.open("a", encoding="utf-8") as out:
        out.write(json.dumps(asdict(result)) + "\n")
    return result
