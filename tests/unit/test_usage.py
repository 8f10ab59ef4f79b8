"""token_counts: every vendor's usage shape read into one TokenCounts."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aicm_tasks.usage import TokenCounts, UsageError, token_counts, without_placeholders


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ({"input_tokens": 812, "output_tokens": 97}, TokenCounts(812, 97)),
        (
            {
                "input_tokens": 1000,
                "output_tokens": 500,
                "cached_input_tokens": 200,
                "reasoning_tokens": 300,
            },
            TokenCounts(1000, 500, cached_input_tokens=200, reasoning_tokens=300),
        ),
        (  # OpenAI chat completions
            {
                "prompt_tokens": 1200,
                "completion_tokens": 300,
                "total_tokens": 1500,
                "prompt_tokens_details": {"cached_tokens": 1024},
                "completion_tokens_details": {"reasoning_tokens": 128},
            },
            TokenCounts(1200, 300, cached_input_tokens=1024, reasoning_tokens=128),
        ),
        (  # OpenAI responses
            {
                "input_tokens": 50,
                "output_tokens": 40,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens_details": {"reasoning_tokens": 30},
            },
            TokenCounts(50, 40, reasoning_tokens=30),
        ),
        (  # Anthropic: cache tokens are reported beside input, not inside it
            {
                "input_tokens": 100,
                "output_tokens": 20,
                "cache_read_input_tokens": 1000,
                "cache_creation_input_tokens": 50,
            },
            TokenCounts(1150, 20, cached_input_tokens=1000, cache_write_tokens=50),
        ),
        (  # Gemini: thoughts are output beside the candidates
            {
                "promptTokenCount": 400,
                "candidatesTokenCount": 60,
                "thoughtsTokenCount": 40,
                "cachedContentTokenCount": 100,
                "totalTokenCount": 500,
            },
            TokenCounts(400, 100, cached_input_tokens=100, reasoning_tokens=40),
        ),
        (  # Bedrock Converse
            {"inputTokens": 10, "outputTokens": 5, "cacheReadInputTokens": 90},
            TokenCounts(100, 5, cached_input_tokens=90),
        ),
        ({"input_tokens": None, "output_tokens": 3}, TokenCounts(0, 3)),
        ({"seconds": 12.5}, TokenCounts()),
    ],
)
def test_each_usage_shape_reads_into_the_same_counts(
    payload: dict[str, Any], expected: TokenCounts
) -> None:
    assert token_counts(payload) == expected


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"input_tokens": 10, "cached_input_tokens": 11}, "cannot exceed input"),
        ({"output_tokens": 10, "reasoning_tokens": 11}, "cannot exceed output"),
        ({"prompt_tokens_details": {"cached_tokens": "3"}}, "prompt_tokens_details.cached_tokens"),
        ({"promptTokenCount": -1}, "promptTokenCount must be a non-negative integer"),
        ({"completion_tokens": True}, "completion_tokens"),
    ],
)
def test_malformed_counts_are_a_usage_error(payload: dict[str, Any], message: str) -> None:
    with pytest.raises(UsageError, match=message) as raised:
        token_counts(payload)
    # The caller names the field ("payload" at the server, "usage" at the call site).
    assert not str(raised.value).startswith(("payload", "usage"))


def test_total_tokens_is_input_plus_output() -> None:
    assert TokenCounts(10, 5, cached_input_tokens=4, reasoning_tokens=2).total_tokens == 15


@pytest.mark.parametrize(
    ("payload", "counts"),
    [
        ({"input_tokens": 10, "output_tokens": {}}, (10, 0, 0, 0)),
        ({"prompt_tokens": {}, "promptTokenCount": 7}, (7, 0, 0, 0)),
        (
            {
                "prompt_tokens": 30,
                "completion_tokens": 5,
                "prompt_tokens_details": {"cached_tokens": {}},
                "completion_tokens_details": {"reasoning_tokens": {}},
            },
            (30, 5, 0, 0),
        ),
        ({"input_tokens": 4, "cache_read_input_tokens": {}, "output_tokens": 1}, (4, 1, 0, 0)),
    ],
)
def test_the_sdks_empty_object_placeholder_counts_as_absent(
    payload: dict[str, Any], counts: tuple[int, int, int, int]
) -> None:
    read = token_counts(payload)
    assert (
        read.input_tokens,
        read.output_tokens,
        read.cached_input_tokens,
        read.reasoning_tokens,
    ) == counts


def test_without_placeholders_drops_only_the_empty_objects_where_counts_go() -> None:
    payload: dict[str, Any] = {
        "output_tokens": {},
        "model": {},
        "input_tokens_details": {"cached_tokens": {}, "other": {}},
        "output_tokens_details": {"reasoning_tokens": 3},
    }
    assert without_placeholders(payload) == {
        "model": {},
        "input_tokens_details": {"other": {}},
        "output_tokens_details": {"reasoning_tokens": 3},
    }
    assert payload["output_tokens"] == {} and payload["input_tokens_details"]["cached_tokens"] == {}
    plain: dict[str, Any] = {"input_tokens": 1, "details": {"x": {}}}
    assert without_placeholders(plain) is plain


_flat_counts = st.one_of(
    st.integers(-1, 2_000), st.none(), st.just({}), st.booleans(), st.just("1"), st.just(1.0)
)


@given(
    payload=st.dictionaries(
        st.sampled_from(
            [
                "input_tokens",
                "cached_input_tokens",
                "cache_write_tokens",
                "output_tokens",
                "reasoning_tokens",
                "total_tokens",
                "model",
            ]
        ),
        _flat_counts,
    )
)
def test_a_flat_payload_reads_as_the_general_reading_does(payload: dict[str, Any]) -> None:
    # An empty details object is no count, but sends token_counts down its general path.
    def read(p: dict[str, Any]) -> TokenCounts | str:
        try:
            return token_counts(p)
        except UsageError as exc:
            return str(exc)

    assert read(payload) == read({**payload, "input_tokens_details": {}})
