"""ServiceCatalog: genai-prices decides which service keys are known."""

from __future__ import annotations

import genai_prices
import pytest

from aicm_tasks.server.catalog import ServiceCatalog, split_service_key


@pytest.fixture(scope="module")
def catalog() -> ServiceCatalog:
    return ServiceCatalog()


@pytest.mark.parametrize(
    "service_key",
    [
        "openai::gpt-4o-mini",
        "openai::gpt-4.1",
        "openai::gpt-5-mini",
        "openai::o3-mini",
        "anthropic::claude-3-5-haiku-20241022",
        "anthropic::claude-sonnet-4-5",
        "google::gemini-2.5-flash",
        "google::gemini-2.0-flash",
    ],
)
def test_current_openai_anthropic_and_google_models_are_known(
    catalog: ServiceCatalog, service_key: str
) -> None:
    assert catalog.knows(service_key)


@pytest.mark.parametrize(
    "service_key",
    [
        "gemini::gemini-2.5-flash",  # the SDK's api id for Google
        "openai_chat::gpt-4o",
        "openai_responses::gpt-5-mini",
        "xai::grok-3",
        "amazon-bedrock::anthropic.claude-3-5-sonnet-20240620-v1:0",
        "google::models/gemini-2.5-flash",  # as the Gemini API reports its models
        "OpenAI::GPT-4o-mini",
    ],
)
def test_vendor_aliases_the_sdk_writes_are_known(catalog: ServiceCatalog, service_key: str) -> None:
    assert catalog.knows(service_key)


@pytest.mark.parametrize(
    "service_key",
    [
        "unknown::service",
        "openai::no-such-model",
        "anthropic::gpt-4o",  # a real model under the wrong vendor
        "openai::",
        "::gpt-4o",
        "gpt-4o",
        "",
    ],
)
def test_unknown_or_malformed_keys_are_not_known(catalog: ServiceCatalog, service_key: str) -> None:
    assert not catalog.knows(service_key)


def test_resolve_names_the_catalog_entry(catalog: ServiceCatalog) -> None:
    match = catalog.resolve("anthropic::claude-3-5-haiku-20241022")
    assert match is not None
    assert match.provider_id == "anthropic"
    assert match.model_id.startswith("claude-3-5-haiku")
    assert catalog.resolve("unknown::service") is None


def test_extra_keys_are_known_from_the_start() -> None:
    catalog = ServiceCatalog(extra=["heygen::streaming-avatar"])
    assert catalog.knows("heygen::streaming-avatar")
    assert not catalog.knows("heygen::other")


def test_learn_makes_an_unknown_key_known() -> None:
    catalog = ServiceCatalog()
    assert not catalog.knows("unknown::service")  # cached as unknown first
    catalog.learn("unknown::service")
    assert catalog.knows("unknown::service")
    assert "unknown::service" in catalog.extra


@pytest.mark.parametrize("bad", ["no-separator", "vendor::", "::service"])
def test_learn_refuses_a_key_without_vendor_and_service(bad: str) -> None:
    with pytest.raises(ValueError, match="vendor::service"):
        ServiceCatalog().learn(bad)


def test_catalog_version_is_the_genai_prices_version(catalog: ServiceCatalog) -> None:
    assert catalog.catalog_version == genai_prices.__version__


def test_split_service_key() -> None:
    assert split_service_key("openai::gpt-4o") == ("openai", "gpt-4o")
    assert split_service_key("a::b::c") == ("a", "b::c")
    assert split_service_key("openai") is None


def test_repeated_lookups_are_served_from_the_cache() -> None:
    catalog = ServiceCatalog()
    keys = ["openai::gpt-4o-mini", "anthropic::claude-3-5-haiku-20241022", "unknown::service"]
    for _ in range(100):
        for key in keys:
            catalog.knows(key)
    info = catalog.cache_info()
    assert info.misses == len(keys)  # misses are cached too: junk keys cost one lookup
    assert info.hits == 99 * len(keys)
