"""What a record costs, in US dollars, from the ``genai-prices`` catalog.

genai-prices' own ``calc_price`` takes about 140 µs a call on this machine:
70 ms for a batch of 500, which would make costing the slowest step of
``/track``. Its prices are linear in each token count within one price tier
(a tier is chosen by the request's total input tokens), so :class:`PriceBook`
asks genai-prices once per model price and tier for the cost of one more
token of each kind (by differences of its own answers, exact in ``Decimal``),
keeps those rates, and costs each record with a few multiplications (~5 µs).
``tests/unit/server/test_server_pricing.py`` checks the result against
``calc_price`` itself over the catalog's models.

Cached and cache-write tokens are part of input (``usage.py``): they are
priced at the catalog's cache rates and the rest of the input at the input
rate. Reasoning tokens are part of output and priced at the catalog's
reasoning rate where it has one, else as output.
"""

from __future__ import annotations

import bisect
import functools
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any, NamedTuple

import genai_prices
from genai_prices import Usage, types

from aicm_tasks.server.catalog import CatalogMatch
from aicm_tasks.usage import TokenCounts

#: Costs are stored as whole nano-dollars (1e-9 USD): integers sum exactly in any
#: database, and a nano-dollar is far below any price step in the catalog.
NANO_USD_PER_USD = Decimal(1_000_000_000)


def plain(amount: Decimal) -> str:
    """A decimal as the API writes amounts: plain digits, no exponent, no trailing zeros."""
    return format(amount.normalize(), "f")


@functools.lru_cache(maxsize=16)
def _catalog_name(version: str) -> str:
    return f"genai-prices {version}"


def to_nano_usd(usd: Decimal) -> int:
    """Round a dollar amount to whole nano-dollars (half to even)."""
    return int((usd * NANO_USD_PER_USD).to_integral_value(rounding=ROUND_HALF_EVEN))


class Cost(NamedTuple):
    """A record's cost in USD, by direction, and the catalog that priced it.

    A named tuple, not a frozen dataclass: one is made per record, and a frozen
    dataclass of these eight fields takes ~0.8 µs to build, a tuple ~0.25.
    """

    provider_id: str
    model_id: str
    input_usd: Decimal
    output_usd: Decimal
    total_usd: Decimal
    catalog_version: str
    #: ``cost_per_unit`` of the input and output events when one rate priced every
    #: token of the direction (written once per rate, not divided and formatted
    #: per record: ~1 µs of a record's ~3.5 µs of ``cost_events``); None: divide.
    input_per_unit: str | None = None
    output_per_unit: str | None = None

    @property
    def nano_usd(self) -> int:
        """The total in whole nano-dollars, as stored."""
        return to_nano_usd(self.total_usd)

    def cost_events(self, service_key: str, tokens: TokenCounts) -> list[dict[str, Any]]:
        """The contract's ``cost_events``: one per direction (input tokens, output tokens).

        ``cost_per_unit`` is the average per token; amounts are decimal strings,
        as the hosted API writes them.
        """
        catalog = _catalog_name(self.catalog_version)
        events = []
        for unit, quantity, cost, known in (
            ("input_tokens", tokens.input_tokens, self.input_usd, self.input_per_unit),
            ("output_tokens", tokens.output_tokens, self.output_usd, self.output_per_unit),
        ):
            if not quantity:
                per_unit = "0"
            elif known is not None:
                per_unit = known
            else:
                per_unit = plain(cost / quantity)
            events.append(
                {
                    "provider_id": self.provider_id,
                    "service_key": service_key,
                    "cost_unit_id": unit,
                    "quantity": quantity,
                    "cost_per_unit": per_unit,
                    "cost": plain(cost),
                    "price_catalog": catalog,
                }
            )
        other = self.total_usd - self.input_usd - self.output_usd
        if other:
            events.append(
                {
                    "provider_id": self.provider_id,
                    "service_key": service_key,
                    "cost_unit_id": "requests",
                    "quantity": 1,
                    "cost_per_unit": plain(other),
                    "cost": plain(other),
                    "price_catalog": catalog,
                }
            )
        return events


@dataclass(frozen=True, slots=True)
class _Rates:
    """USD per token of each kind, in one price tier; ``other`` is per request."""

    model_price: types.ModelPrice  # kept so the id() used as cache key stays valid
    uncached_input: Decimal
    cached_input: Decimal
    cache_write: Decimal
    output: Decimal
    reasoning: Decimal
    other: Decimal
    #: plain() of ``uncached_input`` and ``output``, when ``rate * tokens / tokens``
    #: is exactly the rate for every count the contract allows (else None).
    uncached_input_text: str | None
    output_text: str | None


#: Significant digits of a rate whose product with any count up to the contract's
#: 1e9 (10 digits) is exact in Decimal's default 28 digits, so that dividing the
#: product by the count gives the rate back exactly.
_EXACT_RATE_DIGITS = 18


def _rate_text(rate: Decimal) -> str | None:
    exact = rate.is_finite() and len(rate.as_tuple().digits) <= _EXACT_RATE_DIGITS
    return plain(rate) if exact else None


def _tier_starts(model_price: types.ModelPrice) -> list[int]:
    starts = {
        tier.start
        for value in vars(model_price).values()
        if isinstance(value, types.TieredPrices)
        for tier in value.tiers
    }
    return sorted(starts)


def _probe(model_price: types.ModelPrice, n: int) -> _Rates:
    """The rates at ``n`` input tokens, as differences of genai-prices' own answers."""

    def price(**counts: int) -> types.CalcPrice:
        return model_price.calc_price(Usage(**counts))

    base = price(input_tokens=n)
    one_more = price(input_tokens=n + 1)
    uncached = one_more["input_price"] - base["input_price"]
    cached = price(input_tokens=n, cache_read_tokens=1)["input_price"] - base["input_price"]
    write = price(input_tokens=n, cache_write_tokens=1)["input_price"] - base["input_price"]
    output = price(input_tokens=n, output_tokens=1)["output_price"] - base["output_price"]
    reasoning = (
        price(input_tokens=n, output_tokens=1, output_reasoning_tokens=1)["output_price"]
        - base["output_price"]
    )
    return _Rates(
        model_price=model_price,
        uncached_input_text=_rate_text(uncached),
        output_text=_rate_text(output),
        uncached_input=uncached,
        # One cached token replaces one uncached token of the n.
        cached_input=cached + uncached,
        cache_write=write + uncached,
        output=output,
        reasoning=reasoning,
        other=base["total_price"] - base["input_price"] - base["output_price"],
    )


class PriceBook:
    """Costs records of catalogued models; thread-safe, rates cached per model price and tier."""

    def __init__(self) -> None:
        self._rates: dict[tuple[int, int], _Rates] = {}
        self._tiers: dict[int, tuple[types.ModelPrice, list[int]]] = {}
        self._lock = threading.Lock()

    @property
    def catalog_version(self) -> str:
        """The installed genai-prices version, recorded with every cost."""
        return genai_prices.__version__

    def cost(self, match: CatalogMatch, tokens: TokenCounts, timestamp_s: float) -> Cost | None:
        """What ``tokens`` cost on ``match``'s model at the price in force at ``timestamp_s``.

        None if the match carries no genai-prices model (a learned service key).
        Raises ValueError if genai-prices refuses the usage.
        """
        model = match.model
        if model is None:
            return None
        if isinstance(model.prices, types.ModelPrice):
            # One price at every time: what get_prices answers, without building a
            # datetime per record (1 µs of the ~3 a record costs).
            model_price = model.prices
        else:
            model_price = model.get_prices(datetime.fromtimestamp(timestamp_s, tz=timezone.utc))
        rates = self._rates_for(model_price, tokens.input_tokens)
        # Terms of zero tokens are left out (most records have no cached, cache-write
        # or reasoning tokens): a sum's value, and so every stored and answered
        # figure, is the same without them.
        cached = tokens.cached_input_tokens
        cache_write = tokens.cache_write_tokens
        reasoning = tokens.reasoning_tokens
        input_usd = rates.uncached_input * (tokens.input_tokens - cached - cache_write)
        if cached:
            input_usd += rates.cached_input * cached
        if cache_write:
            input_usd += rates.cache_write * cache_write
        output_usd = rates.output * (tokens.output_tokens - reasoning)
        if reasoning:
            output_usd += rates.reasoning * reasoning
        return Cost(
            match.provider_id,
            match.model_id,
            input_usd,
            output_usd,
            input_usd + output_usd + rates.other,
            self.catalog_version,
            None if cached or cache_write else rates.uncached_input_text,
            None if reasoning else rates.output_text,
        )

    def _rates_for(self, model_price: types.ModelPrice, input_tokens: int) -> _Rates:
        price_id = id(model_price)
        known = self._tiers.get(price_id)
        if known is None or known[0] is not model_price:
            known = (model_price, _tier_starts(model_price))
            with self._lock:
                self._tiers[price_id] = known
        starts = known[1]
        # genai-prices applies a tier when total input > its start.
        tier = bisect.bisect_left(starts, input_tokens)
        key = (price_id, tier)
        rates = self._rates.get(key)
        if rates is None or rates.model_price is not model_price:
            n = starts[tier - 1] + 1 if tier else 1
            rates = _probe(model_price, n)
            with self._lock:
                self._rates[key] = rates
        return rates
