"""Is the broker set up to keep records? Its eviction policy and persistence.

An evicting Redis (``maxmemory-policy allkeys-lru``) drops queued records when
it fills up, and ``LPUSH`` still answers OK: the producer has no way to know.
So the worker reads the settings at start and every
:data:`CHECK_INTERVAL_S`, logs what is wrong, tells its observers (a metric,
and a hash in the broker that ``aicm-tasks status`` shows), and ``status``
reads them too.

Reading: ``CONFIG GET`` first; managed Redis often refuses ``CONFIG``, so then
``INFO memory`` / ``INFO persistence``; when both are refused the settings are
"unknown" with the reason, never an exception.

Judging (:func:`judge_settings`, a pure function):

- ``allkeys-*`` policies evict any key, records included: an error, and
  ``status`` is unhealthy.
- ``volatile-*`` policies evict only keys with a TTL. No key that holds a
  record has one (the queue, batches, the scheduled set and the dead letters
  never expire; only the delivery-rate buckets do, and losing them blanks a
  figure, not a record), and when nothing volatile is left Redis refuses
  writes exactly as with ``noeviction``, so the producer spools. A warning:
  ``noeviction`` says the intent, and a key given a TTL by someone else's
  tooling would become evictable.
- AOF off: a warning (a crash loses everything since the last RDB snapshot,
  or everything with RDB off too), not unhealthy by itself.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import redis

#: How often a worker reads the broker's settings again, in seconds.
CHECK_INTERVAL_S = 60.0
#: The only policy under which Redis never drops a key to make room.
SAFE_POLICY = "noeviction"
#: Where the settings were read from, when nothing could be read.
UNKNOWN = "unknown"


@dataclass(frozen=True)
class BrokerSettings:
    """What the broker said about eviction and persistence (None: not known)."""

    #: ``maxmemory-policy``.
    maxmemory_policy: str | None
    #: ``appendonly``.
    aof_enabled: bool | None
    #: RDB snapshot schedule (``save``, "" when off); INFO does not show it.
    rdb_save: str | None
    #: "CONFIG", "INFO" or "unknown".
    source: str
    #: Why some or all of it is unknown (the commands' answers), or "".
    note: str = ""
    #: When it was read (epoch seconds) and by whom (a worker's consumer name, "status").
    read_at: float = field(default_factory=time.time)
    read_by: str = ""

    def as_hash(self) -> dict[str, str]:
        """The settings as a Redis hash of strings; what is unknown is left out."""
        return {
            k: str(int(v)) if isinstance(v, bool) else str(v)
            for k, v in asdict(self).items()
            if v is not None
        }

    @classmethod
    def from_hash(cls, raw: dict[Any, Any]) -> BrokerSettings | None:
        """The settings a worker stored with :meth:`as_hash`; None when there are none."""
        values = {_text(k): _text(v) for k, v in raw.items()}
        if "source" not in values:
            return None
        aof = values.get("aof_enabled")
        return cls(
            maxmemory_policy=values.get("maxmemory_policy"),
            aof_enabled=None if aof is None else aof == "1",
            rdb_save=values.get("rdb_save"),
            source=values["source"],
            note=values.get("note", ""),
            read_at=float(values.get("read_at") or 0.0),
            read_by=values.get("read_by", ""),
        )


@dataclass(frozen=True)
class Finding:
    """One thing wrong with the broker's settings. ``level`` is "error" or "warning"."""

    level: str
    message: str


def read_settings(client: redis.Redis, read_by: str = "") -> BrokerSettings:
    """Ask the broker: ``CONFIG GET``, else ``INFO``, else "unknown" with the reason.

    Raises only :class:`redis.ConnectionError`/``TimeoutError`` (the broker did
    not answer at all); a refused command is an answer.
    """
    try:
        config = _config_get(client, "maxmemory-policy", "appendonly", "save")
        return BrokerSettings(
            maxmemory_policy=config.get("maxmemory-policy") or None,
            aof_enabled=_yes(config.get("appendonly")),
            rdb_save=config.get("save"),
            source="CONFIG",
            read_by=read_by,
        )
    except redis.ResponseError as exc:
        config_refused = f"CONFIG GET refused ({exc})"
    try:
        memory = client.info("memory")
        persistence = client.info("persistence")
    except redis.ResponseError as exc:
        return BrokerSettings(
            None,
            None,
            None,
            UNKNOWN,
            note=f"{config_refused}; INFO refused ({exc})",
            read_by=read_by,
        )
    aof = persistence.get("aof_enabled")
    return BrokerSettings(
        maxmemory_policy=str(memory["maxmemory_policy"]) if "maxmemory_policy" in memory else None,
        aof_enabled=None if aof is None else bool(int(aof)),
        rdb_save=None,
        source="INFO",
        note=f"{config_refused}; read from INFO",
        read_by=read_by,
    )


def judge_settings(settings: BrokerSettings) -> list[Finding]:
    """What is wrong with ``settings`` for keeping records; empty when nothing is."""
    findings: list[Finding] = []
    policy = settings.maxmemory_policy
    if policy is None:
        findings.append(
            Finding(
                "warning",
                "maxmemory-policy is unknown"
                + (f" ({settings.note})" if settings.note else "")
                + f": make sure it is {SAFE_POLICY}",
            )
        )
    elif policy.startswith("allkeys-"):
        findings.append(
            Finding(
                "error",
                f"maxmemory-policy is {policy}: a full Redis evicts queued records and still "
                f"answers OK to the producer; set maxmemory-policy {SAFE_POLICY}",
            )
        )
    elif policy != SAFE_POLICY:
        findings.append(
            Finding(
                "warning",
                f"maxmemory-policy is {policy}: it evicts only keys with a TTL, and no key that "
                f"holds a record has one; set {SAFE_POLICY} to say so",
            )
        )
    if settings.aof_enabled is None:
        findings.append(Finding("warning", "whether AOF is on is unknown"))
    elif not settings.aof_enabled:
        if settings.rdb_save == "":
            risk = "AOF and RDB snapshots are off: a Redis restart loses every record in it"
        elif settings.rdb_save:
            risk = (
                f"AOF is off: a Redis crash loses the records written since the last RDB "
                f"snapshot (save {settings.rdb_save})"
            )
        else:
            risk = "AOF is off: a Redis crash loses at least the records since the last snapshot"
        findings.append(Finding("warning", f"{risk}; set appendonly yes"))
    return findings


def evicts_records(settings: BrokerSettings) -> bool | None:
    """True when the policy may drop records, False when not, None when unknown."""
    if settings.maxmemory_policy is None:
        return None
    return settings.maxmemory_policy.startswith("allkeys-")


def _config_get(client: redis.Redis, *names: str) -> dict[str, str]:
    values: dict[str, str] = {}
    for name in names:  # one name per call: Redis < 7 takes one pattern only
        for key, value in client.config_get(name).items():
            values[_text(key)] = _text(value)
    return values


def _yes(value: str | None) -> bool | None:
    return None if value is None else value.lower() == "yes"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
