"""The worker's startup banner, with the tracking queue among its ``[queues]``.

Celery's banner lists the queues its consumer reads (``app.amqp.queues``). The
tracking queue is not among them on purpose: it is left out of
``app.amqp.queues`` so that ``celery purge`` spares it (app.py), and taken from
Celery's consumer when named with ``-Q`` (bootstep.py), because the delivery
step reads it in bulk. Yet the worker does consume it, so an operator reading
the banner must see it: :class:`TrackingWorker` adds its line, in Celery's
format, after the queues Celery lists, without putting it back in
``app.amqp.queues``.
"""

from __future__ import annotations

from typing import Any

from celery.app.amqp import QUEUE_FORMAT  # type: ignore[attr-defined]  # not in celery-types
from celery.apps.worker import ARTLINES, Worker  # type: ignore[attr-defined]  # ARTLINES: same

from aicm_tasks.worker.bootstep import tracking_queue

#: What the banner adds after the tracking queue's line.
CONSUMED_BY = "(read in bulk by the delivery step)"


class TrackingWorker(Worker):
    """``celery worker``'s worker, whose banner lists the tracking queue."""

    app: Any

    def startup_info(self, artlines: bool = True) -> str:
        """Celery's banner, plus the tracking queue's line under ``[queues]``."""
        banner: str = super().startup_info(artlines)
        queue = tracking_queue(self.app)
        if queue is None:
            return banner
        line = f"{QUEUE_FORMAT.strip().format(queue)} {CONSUMED_BY}"
        return with_queue_line(banner, line, artlines=artlines)


def with_queue_line(banner: str, line: str, *, artlines: bool) -> str:
    """``banner`` with ``line`` added as its last queue line.

    ``[queues]`` is the banner's last section, so the line goes at the end; a
    blank last line (Celery's, when its consumer reads no queue) is replaced.
    With ``artlines`` Celery indents lines past its ASCII art by 16 spaces, and
    so does this.
    """
    lines = banner.rstrip("\n").split("\n")
    if lines and not lines[-1].strip():
        lines.pop()
    index = len(lines)
    if not artlines:
        prefix = ""
    elif index < len(ARTLINES):
        prefix = ARTLINES[index] + " "
    else:
        prefix = " " * 16
    return "\n".join([*lines, prefix + line]) + "\n"
