"""The tracking task of an app and its spool, typed as such for mypy."""

from __future__ import annotations

from typing import cast

from aicm_tasks.app import AicmCelery
from aicm_tasks.producer.spool import Spool
from aicm_tasks.tasks import TrackTask


def track_of(app: AicmCelery) -> TrackTask:
    """The ``aicm_tasks.track`` task ``create_app`` registered on ``app``
    (Celery's registry is typed for any task)."""
    return cast(TrackTask, app.tasks[TrackTask.name])


def spool_of(track: TrackTask) -> Spool:
    """The spool of ``track``'s publisher, for tests whose settings leave it on."""
    spool = track.publisher.spool
    if spool is None:
        raise AssertionError("AICM_SPOOL_ENABLED is off for this task: it has no spool")
    return spool
