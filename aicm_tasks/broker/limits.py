"""The current triggered limits, kept in the broker so every process and host sees one set.

Workers write what they verified (:mod:`aicm_tasks.worker.limits`); producers
read it into an in-process snapshot (:mod:`aicm_tasks.producer.limits`). One
hash field per API-key source: the default key is :data:`DEFAULT_SOURCE`, an
alias (``AICM_API_KEYS``) its own name; the server answers each key with that
key's set, so sets of different keys never overwrite each other. Only verified
limits are stored, never a token or a key: whoever can write this hash could as
well write records, so the broker is trusted as it is for them.
"""

from __future__ import annotations

import logging

from aicm_tasks.broker import scripts
from aicm_tasks.broker.keys import Keys
from aicm_tasks.broker.records import BrokerClient
from aicm_tasks.limits import TriggeredLimit, decode_limits, encode_limits

logger = logging.getLogger(__name__)

#: The hash field of the default API key's limits. Not an alias name (aliases
#: hold no ``:``), so no alias can take its place.
DEFAULT_SOURCE = ":default"
#: Separates a source from the suffix of its issue-time field.
_STAMP = "@issued_at"

#: What :meth:`LimitStore.write` returns.
WRITTEN, UNCHANGED, STALE = 1, 0, -1


def source_of(api_key_alias: str | None) -> str:
    """The hash field of the limits that apply to records sent with ``api_key_alias``."""
    return DEFAULT_SOURCE if api_key_alias is None else api_key_alias


class LimitStore:
    """Reads and writes the triggered limits of one key prefix.

    With shards, the pipeline keeps one set, on shard 0: build this store with
    shard 0's client and keys (its hash and channel carry shard 0's hash tag,
    so the write script touches one slot on Redis Cluster).
    """

    def __init__(self, client: BrokerClient, keys: Keys) -> None:
        self.client = client
        self.keys = keys
        self._write = client.register_script(scripts.source("write_limits"))

    def write(self, source: str, limits: tuple[TriggeredLimit, ...], *, issued_at: float) -> int:
        """Replace ``source``'s limits unless a newer set (by ``issued_at``, epoch
        seconds) is stored; subscribers of ``limits_changed`` hear of a change.

        Returns :data:`WRITTEN`, :data:`UNCHANGED` or :data:`STALE`."""
        result = self._write(
            keys=[self.keys.limits, self.keys.limits_changed],
            args=[source, repr(float(issued_at)), encode_limits(limits)],
        )
        return int(result)

    def read(self) -> dict[str, tuple[TriggeredLimit, ...]]:
        """Every source's limits (one HGETALL). A field that does not read as limits
        is left out with a warning: a broken entry must not stop every producer."""
        raw = self.client.hgetall(self.keys.limits)
        found: dict[str, tuple[TriggeredLimit, ...]] = {}
        for field, value in raw.items():
            name = field.decode(errors="replace") if isinstance(field, bytes) else str(field)
            if name.endswith(_STAMP):
                continue
            try:
                found[name] = decode_limits(value)
            except (ValueError, TypeError, RecursionError) as exc:
                # RecursionError: JSON nested past the parser, which would otherwise
                # stop every producer's check (and track.delay after publishing).
                logger.warning(
                    "the triggered limits stored for %s cannot be read: %s",
                    name,
                    type(exc).__name__ if isinstance(exc, RecursionError) else exc,
                )
        return found
