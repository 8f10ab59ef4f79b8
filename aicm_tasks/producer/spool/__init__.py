"""The producer's local spool: where a validated record waits when the broker is down.

:mod:`.database` is the SQLite file (appends, a drain's claims: why SQLite, and
what each setting costs); :mod:`.drain` the :class:`Spool` the publisher and
``aicm-tasks spool`` use (status, drains, the background drainer). Their
loggers are children of ``aicm_tasks.producer.spool``.
"""

from aicm_tasks.producer.spool.database import (
    CLAIM_EXPIRY_S,
    DRAIN_CHUNK,
    JOURNAL_SIZE_LIMIT_BYTES,
    SpoolDatabase,
    destination_of,
)
from aicm_tasks.producer.spool.drain import DRAIN_INTERVAL_S, Spool, SpoolStatus, SpoolTarget

__all__ = [
    "CLAIM_EXPIRY_S",
    "DRAIN_CHUNK",
    "DRAIN_INTERVAL_S",
    "JOURNAL_SIZE_LIMIT_BYTES",
    "Spool",
    "SpoolDatabase",
    "SpoolStatus",
    "SpoolTarget",
    "destination_of",
]
