"""Which service keys the local server recognises, backed by the ``genai-prices`` catalog.

A service key is ``vendor::model`` (``openai::gpt-4o-mini``). The vendor names a
provider of the maintained `genai-prices <https://github.com/pydantic/genai-prices>`_
data (its own provider-matching logic already maps ``gemini`` to Google and
``openai_chat`` / ``openai_responses`` to OpenAI); the model must match one of
that provider's models, with genai-prices' own alias rules (dated snapshots such
as ``claude-3-5-haiku-20241022`` match their base model).

Keys the catalog does not cover (custom services, e.g. ``heygen::streaming-avatar``)
are taught with ``extra=`` or :meth:`ServiceCatalog.learn`.

Matching is case-insensitive throughout, because genai-prices lower-cases model
references and a learned key should not behave differently from a catalogued one.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field

import genai_prices
from genai_prices import data_snapshot, types

from aicm_tasks.contract import split_service_key

logger = logging.getLogger(__name__)

#: Distinct service keys whose catalog answer is kept; lookups are repeated per
#: record, and a bound keeps a flood of junk keys from growing memory forever.
DEFAULT_CACHE_SIZE = 8192

#: Vendor names the official SDK writes that genai-prices' provider matching does
#: not recognise on its own (``aicostmanager.usage_utils.VENDOR_TO_API`` and the
#: wrappers' ``vendor=`` values), mapped to genai-prices provider ids.
VENDOR_ALIASES: dict[str, str] = {
    "fireworks-ai": "fireworks",
    "amazon-bedrock": "aws",
}

#: Prefix the Gemini API puts on model names it reports (``models/gemini-2.5-flash``).
_GEMINI_MODEL_PREFIX = "models/"


@dataclass(frozen=True, slots=True)
class CatalogMatch:
    """The genai-prices entry a service key resolved to; ``pricing.py`` costs with it."""

    provider_id: str
    model_id: str
    provider: types.Provider | None = field(default=None, compare=False, repr=False)
    model: types.ModelInfo | None = field(default=None, compare=False, repr=False)


__all__ = ["CatalogMatch", "ServiceCatalog", "split_service_key"]


class ServiceCatalog:
    """Decides whether a service key is known: genai-prices' catalog plus learned keys.

    Thread-safe: lookups go through a ``functools.lru_cache`` (itself thread-safe)
    and learned keys live in a set replaced under a lock, so readers never see
    it mid-update.
    """

    def __init__(self, extra: Iterable[str] = (), *, cache_size: int = DEFAULT_CACHE_SIZE) -> None:
        """Build a catalog that also knows every key in ``extra``.

        ``cache_size`` bounds how many distinct keys' answers are remembered.
        """
        self._learn_lock = threading.Lock()
        self._extra: frozenset[str] = frozenset(key.lower() for key in extra)
        # A per-instance cache: lru_cache on the method would be shared by every
        # instance and keep them alive.
        self._resolve_cached = functools.lru_cache(maxsize=cache_size)(self._resolve_uncached)

    @property
    def catalog_version(self) -> str:
        """The installed ``genai-prices`` version whose bundled data answers lookups."""
        return genai_prices.__version__

    @property
    def extra(self) -> frozenset[str]:
        """The keys known beyond the catalog (given at construction or learned), lower-cased."""
        return self._extra

    def knows(self, service_key: str) -> bool:
        """True if ``service_key`` was learned or resolves to a genai-prices model."""
        key = service_key.lower()
        return key in self._extra or self._resolve_cached(key) is not None

    def resolve(self, service_key: str) -> CatalogMatch | None:
        """The genai-prices provider and model behind ``service_key``, or None.

        Learned keys resolve to None unless the catalog also has them.
        """
        return self._resolve_cached(service_key.lower())

    def cache_info(self) -> functools._CacheInfo:
        """Hits and misses of the lookup cache (``functools.lru_cache`` statistics)."""
        return self._resolve_cached.cache_info()

    def learn(self, service_key: str) -> None:
        """Know ``service_key`` from now on (for services the catalog lacks).

        Raises ValueError if it is not of the form ``vendor::service``.
        """
        if split_service_key(service_key) is None:
            raise ValueError(
                f"service key {service_key!r} is not of the form 'vendor::service' "
                "(e.g. 'openai::gpt-4o-mini')"
            )
        with self._learn_lock:
            # Copy-on-write: knows() reads self._extra without the lock.
            self._extra = self._extra | {service_key.lower()}
        logger.info("service key %s learned", service_key)

    def _resolve_uncached(self, key: str) -> CatalogMatch | None:
        parts = split_service_key(key)
        if parts is None:
            return None
        vendor, model = parts
        vendor = VENDOR_ALIASES.get(vendor, vendor)
        if model.startswith(_GEMINI_MODEL_PREFIX):
            model = model[len(_GEMINI_MODEL_PREFIX) :]
        # get_snapshot() is read per miss, not once, so a snapshot refreshed by
        # genai_prices.UpdatePrices is seen by keys not yet cached.
        snapshot = data_snapshot.get_snapshot()
        try:
            provider, model_info = snapshot.find_provider_model(model, None, vendor, None)
        except LookupError:
            return None
        return CatalogMatch(
            provider_id=provider.id, model_id=model_info.id, provider=provider, model=model_info
        )
