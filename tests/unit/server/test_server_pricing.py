"""PriceBook: costs checked against hand-computed figures and against genai-prices itself."""

from __future__ import annotations

import random
from datetime import datetime, timezone
from decimal import Decimal

import genai_prices
import pytest
from genai_prices import Usage, data_snapshot

from aicm_tasks.server.catalog import ServiceCatalog
from aicm_tasks.server.pricing import PriceBook, to_nano_usd
from aicm_tasks.usage import TokenCounts, token_counts

#: 2025-11-01T00:00:00Z: prices are those in force on that day.
AT = datetime(2025, 11, 1, tzinfo=timezone.utc).timestamp()
M = Decimal(1_000_000)


@pytest.fixture(scope="module")
def catalog() -> ServiceCatalog:
    return ServiceCatalog()


def cost_of(catalog: ServiceCatalog, service_key: str, payload: dict[str, int]) -> Decimal:
    match = catalog.resolve(service_key)
    assert match is not None
    cost = PriceBook().cost(match, token_counts(payload), AT)
    assert cost is not None
    assert cost.catalog_version == genai_prices.__version__
    return cost.total_usd


@pytest.mark.parametrize(
    ("service_key", "payload", "by_hand"),
    [
        # gpt-4o-mini: $0.15 input, $0.075 cached input, $0.60 output per million.
        (
            "openai::gpt-4o-mini",
            {"input_tokens": 1000, "output_tokens": 500, "cached_input_tokens": 200},
            (800 * Decimal("0.15") + 200 * Decimal("0.075") + 500 * Decimal("0.6")) / M,
        ),
        # o3-mini: $1.10 input, $4.40 output; reasoning tokens are output tokens.
        (
            "openai::o3-mini",
            {
                "prompt_tokens": 2000,
                "completion_tokens": 3000,
                "completion_tokens_details": {"reasoning_tokens": 2500},
            },
            (2000 * Decimal("1.1") + 3000 * Decimal("4.4")) / M,
        ),
        # claude-3-5-haiku: $0.80 input, $0.08 cache read, $1 cache write, $4 output.
        (
            "anthropic::claude-3-5-haiku-20241022",
            {
                "input_tokens": 100,
                "cache_read_input_tokens": 1000,
                "cache_creation_input_tokens": 50,
                "output_tokens": 20,
            },
            (100 * Decimal("0.8") + 1000 * Decimal("0.08") + 50 * Decimal("1") + 20 * 4) / M,
        ),
        # gemini-2.5-flash: $0.30 input, $2.50 output; thoughts are billed as output.
        (
            "google::gemini-2.5-flash",
            {"promptTokenCount": 400, "candidatesTokenCount": 60, "thoughtsTokenCount": 40},
            (400 * Decimal("0.3") + 100 * Decimal("2.5")) / M,
        ),
        # claude-sonnet-4-5 over 200k input tokens: every token at the higher tier,
        # $6 input and $22.50 output per million.
        (
            "anthropic::claude-sonnet-4-5",
            {"input_tokens": 250_000, "output_tokens": 1000},
            (250_000 * Decimal("6") + 1000 * Decimal("22.5")) / M,
        ),
        # ... and at exactly 200k, still the base tier: $3 and $15.
        (
            "anthropic::claude-sonnet-4-5",
            {"input_tokens": 200_000, "output_tokens": 1000},
            (200_000 * Decimal("3") + 1000 * Decimal("15")) / M,
        ),
    ],
)
def test_costs_match_hand_computed_figures(
    catalog: ServiceCatalog, service_key: str, payload: dict[str, int], by_hand: Decimal
) -> None:
    assert cost_of(catalog, service_key, payload) == by_hand


def test_a_learned_service_key_has_no_price(catalog: ServiceCatalog) -> None:
    learned = ServiceCatalog(extra=["heygen::streaming-avatar"])
    match = learned.resolve("heygen::streaming-avatar")
    assert match is None


def test_nano_usd_rounds_half_to_even() -> None:
    assert to_nano_usd(Decimal("0.0000000015")) == 2
    assert to_nano_usd(Decimal("0.0000000025")) == 2
    assert to_nano_usd(Decimal("1.5")) == 1_500_000_000


def test_the_price_book_agrees_with_genai_prices_over_the_catalog(catalog: ServiceCatalog) -> None:
    """Every catalogued model, random usages in every tier: the same Decimal as calc_price."""
    rng = random.Random(7)
    book = PriceBook()
    at = datetime.fromtimestamp(AT, tz=timezone.utc)
    compared = 0
    for provider in data_snapshot.get_snapshot().providers:
        for model in provider.models:
            match = catalog.resolve(f"{provider.id}::{model.id}")
            if match is None or match.model is not model:
                continue
            for _ in range(3):
                total_in = rng.choice([0, 7, 1000, 150_000, 250_000, 1_200_000])
                cached = rng.randint(0, total_in // 2)
                write = rng.randint(0, (total_in - cached) // 2)
                out = rng.randint(0, 5000)
                reasoning = rng.randint(0, out)
                usage = Usage(
                    input_tokens=total_in,
                    cache_read_tokens=cached,
                    cache_write_tokens=write,
                    output_tokens=out,
                    output_reasoning_tokens=reasoning,
                )
                try:
                    expected = model.calc_price(usage, provider, genai_request_timestamp=at)
                except ValueError:
                    continue  # a usage this model cannot price (e.g. no cache-write price)
                tokens = TokenCounts(total_in, out, cached, write, reasoning)
                cost = book.cost(match, tokens, AT)
                assert cost is not None
                assert (cost.input_usd, cost.output_usd, cost.total_usd) == (
                    expected.input_price,
                    expected.output_price,
                    expected.total_price,
                ), f"{provider.id}::{model.id} {tokens}"
                compared += 1
    assert compared > 1000
