"""The reconnect loop both RabbitMQ consumers of a worker run (records, parked records).

A consumer's connection is its whole state: on any broker failure it is
closed, which makes RabbitMQ return every delivery it had not acknowledged,
and a new one is opened after a pause that grows like the Redis service's.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from aicm_tasks.broker.rabbitmq.connection import RABBIT_ERRORS
from aicm_tasks.errors import SettleError
from aicm_tasks.worker.retry import REDIS_RETRY_MAX_S, REDIS_RETRY_MIN_S, next_pause_s

logger = logging.getLogger(__name__)

#: Every socket wait of a worker's connection (connect, a write, a confirm), in
#: seconds: far above a healthy broker's answer, short enough that a broker
#: gone silent hands the batch back within it.
CONNECTION_TIMEOUT_S = 10.0
#: Errors after which a consumer reconnects: the broker's, and a settle it refused.
RECONNECT_ERRORS: tuple[type[BaseException], ...] = (*RABBIT_ERRORS, SettleError)


def consume_reconnecting(
    stop: threading.Event, queue: str, turn: Callable[[], bool], drop: Callable[[], None]
) -> None:
    """Call ``turn`` (which connects when it has no connection) until it returns
    False; after a broker error or a bug, ``drop`` the connection and pause.
    ``drop`` runs once more at the end."""
    pause_s = REDIS_RETRY_MIN_S
    try:
        while True:
            try:
                if not turn():
                    return
                pause_s = REDIS_RETRY_MIN_S
            except RECONNECT_ERRORS as exc:
                logger.warning(
                    "RabbitMQ error while consuming %s (%s: %s); what this worker held goes "
                    "back to the queue, reconnecting in %.1fs",
                    queue,
                    type(exc).__name__,
                    exc,
                    pause_s,
                )
                drop()
                stop.wait(pause_s)
                pause_s = next_pause_s(pause_s)
            except Exception:  # a bug must not kill the thread
                logger.exception(
                    "unexpected error while consuming %s; what this worker held goes back "
                    "to the queue",
                    queue,
                )
                drop()
                stop.wait(REDIS_RETRY_MAX_S)
    finally:
        drop()
