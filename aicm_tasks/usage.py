"""Token counts out of a record's payload, whichever vendor's usage shape it carries.

The official SDK sends each vendor's own usage object as the payload, so one
server sees several shapes. :func:`token_counts` reads them all into one
:class:`TokenCounts`, where ``input_tokens`` is every input token (cached ones
included) and ``output_tokens`` every output token (reasoning ones included):

============================  ============================================  =========================
shape                         input (cached, cache writes)                  output (reasoning)
============================  ============================================  =========================
flat (this project's README)  ``input_tokens`` (``cached_input_tokens``,    ``output_tokens``
                              ``cache_write_tokens``) — included in input   (``reasoning_tokens``)
OpenAI chat completions       ``prompt_tokens``                             ``completion_tokens``
                              (``prompt_tokens_details.cached_tokens``)     (``completion_tokens_details
                                                                            .reasoning_tokens``)
OpenAI responses              ``input_tokens``                              ``output_tokens``
                              (``input_tokens_details.cached_tokens``)      (``output_tokens_details
                                                                            .reasoning_tokens``)
Anthropic                     ``input_tokens`` + ``cache_read_input_tokens``  ``output_tokens``
                              + ``cache_creation_input_tokens`` (Anthropic
                              counts cache tokens apart from input)
Gemini                        ``promptTokenCount``                          ``candidatesTokenCount`` +
                              (``cachedContentTokenCount``)                 ``thoughtsTokenCount``
Bedrock Converse              ``inputTokens`` + ``cacheReadInputTokens``    ``outputTokens``
                              + ``cacheWriteInputTokens``
============================  ============================================  =========================

Pure functions, shared by the call site and the local server through
``contract.py``: a count that is present but not a non-negative integer, or
cached tokens above the input they are part of, raise :class:`UsageError`, and
the record is refused (at the call site) or answers ``error`` (at the server).
A count that is null, or ``{}`` (how the official SDK serialises an unset
count: :func:`is_placeholder`), is absent.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple


class UsageError(ValueError):
    """A payload's token counts are malformed; the message says which and why."""


class TokenCounts(NamedTuple):
    """One record's tokens. ``cached_input_tokens`` and ``cache_write_tokens`` are
    part of ``input_tokens``; ``reasoning_tokens`` are part of ``output_tokens``.

    A named tuple, not a frozen dataclass: the server makes one per record, in
    ~0.2 µs rather than ~0.5."""

    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        """Input plus output tokens."""
        return self.input_tokens + self.output_tokens


#: Where each count may be found, first match wins: a name or a (parent, child) path.
_INPUT = ("input_tokens", "prompt_tokens", "promptTokenCount", "inputTokens")
_OUTPUT = ("output_tokens", "completion_tokens", "outputTokens")
_CACHED = (
    "cached_input_tokens",
    "cache_read_tokens",
    ("input_tokens_details", "cached_tokens"),
    ("prompt_tokens_details", "cached_tokens"),
    "cachedContentTokenCount",
)
_CACHE_WRITE = ("cache_write_tokens",)
_REASONING = (
    "reasoning_tokens",
    ("output_tokens_details", "reasoning_tokens"),
    ("completion_tokens_details", "reasoning_tokens"),
)
#: Cache counts that vendors report *beside* input, not inside it (Anthropic, Bedrock).
_CACHE_READ_APART = ("cache_read_input_tokens", "cacheReadInputTokens")
_CACHE_WRITE_APART = ("cache_creation_input_tokens", "cacheWriteInputTokens")
_GEMINI_OUTPUT = ("candidatesTokenCount", "thoughtsTokenCount")

#: Counts that are part of another (cached within input, reasoning within output):
#: only a payload holding one of them can fail :func:`token_counts`' consistency checks.
PART_COUNT_PATHS: tuple[str | tuple[str, str], ...] = (
    *_CACHED,
    *_CACHE_WRITE,
    *_REASONING,
    "thoughtsTokenCount",
)

#: Every place in a payload that holds a token count: what :func:`token_counts`
#: reads, plus the totals the SDKs write. When present (not null, not the SDK's
#: ``{}`` placeholder) each must be a non-negative integer (``contract.py`` also
#: bounds it).
TOKEN_COUNT_PATHS: tuple[str | tuple[str, str], ...] = tuple(
    dict.fromkeys(
        (
            *_INPUT,
            *_OUTPUT,
            *_CACHED,
            *_CACHE_WRITE,
            *_REASONING,
            *_CACHE_READ_APART,
            *_CACHE_WRITE_APART,
            *_GEMINI_OUTPUT,
            "total_tokens",
            "totalTokenCount",
            "totalTokens",
        )
    )
)


def is_placeholder(value: Any) -> bool:
    """True for what stands for an unset count: null, or the official SDK's ``{}``.

    The SDK's usage extractors (``aicostmanager.usage_utils._to_serializable_dict``)
    turn every ``None`` in a usage object into ``{}``, so a count the vendor left
    unset arrives as ``"output_tokens": {}``.
    """
    return value is None or (type(value) is dict and not value)


def _count(payload: Mapping[str, Any], paths: tuple[str | tuple[str, str], ...]) -> int | None:
    for path in paths:
        if type(path) is str:
            value = payload.get(path)
        else:
            parent = payload.get(path[0])
            if parent is None:  # skip the ABC isinstance below (0.3 µs a record)
                continue
            value = parent.get(path[1]) if isinstance(parent, Mapping) else None
        if value is None:  # SDK usage objects serialise unset counts as null
            continue
        # bool is an int subclass in Python but not a count.
        if type(value) is not int or value < 0:
            if type(value) is dict and not value:  # the SDK's placeholder: unset
                continue
            name = path if type(path) is str else ".".join(path)
            raise UsageError(f"{name} must be a non-negative integer")
        return value
    return None


def token_counts(payload: Mapping[str, Any]) -> TokenCounts:
    """Read the tokens of ``payload`` (any shape in the module docstring); absent counts are 0.

    A null or ``{}`` count is absent (:func:`is_placeholder`).

    Raises :class:`UsageError` for a malformed count or cached tokens above input.
    """
    if _NOT_FLAT.isdisjoint(payload):
        return _flat_counts(payload)
    input_tokens = _count(payload, _INPUT) or 0
    cached = _count(payload, _CACHED) or 0
    cache_write = _count(payload, _CACHE_WRITE) or 0
    read_apart = _count(payload, _CACHE_READ_APART)
    write_apart = _count(payload, _CACHE_WRITE_APART)
    if read_apart is not None or write_apart is not None:
        cached += read_apart or 0
        cache_write += write_apart or 0
        input_tokens += (read_apart or 0) + (write_apart or 0)
    elif cached + cache_write > input_tokens:
        raise UsageError(
            "cached and cache-write tokens cannot exceed input tokens "
            f"({cached} + {cache_write} > {input_tokens})"
        )
    output_tokens = _count(payload, _OUTPUT)
    reasoning = _count(payload, _REASONING) or 0
    if output_tokens is None:
        # Gemini reports thoughts beside the candidates; both are billed as output.
        candidates = _count(payload, ("candidatesTokenCount",)) or 0
        thoughts = _count(payload, ("thoughtsTokenCount",)) or 0
        output_tokens = candidates + thoughts
        reasoning = reasoning or thoughts
    if reasoning > output_tokens:
        raise UsageError(
            f"reasoning tokens cannot exceed output tokens ({reasoning} > {output_tokens})"
        )
    return TokenCounts(
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cached_input_tokens=cached,
        cache_write_tokens=cache_write,
        reasoning_tokens=reasoning,
    )


#: TOKEN_COUNT_PATHS by level: the top-level names, and per parent the names inside it.
_TOP_COUNT_NAMES = frozenset(path for path in TOKEN_COUNT_PATHS if type(path) is str)
_CHILD_COUNT_NAMES: dict[str, frozenset[str]] = {
    parent: frozenset(p[1] for p in TOKEN_COUNT_PATHS if type(p) is tuple and p[0] == parent)
    for parent in {path[0] for path in TOKEN_COUNT_PATHS if type(path) is tuple}
}
_COUNT_PARENTS = frozenset(_CHILD_COUNT_NAMES)


def without_placeholders(payload: dict[str, Any]) -> dict[str, Any]:
    """``payload`` without the SDK's ``{}`` placeholders for unset token counts.

    Only a ``{}`` at a count's place (:data:`TOKEN_COUNT_PATHS`, top level or
    inside its parent object) is dropped: elsewhere ``{}`` is the caller's data.
    Returns ``payload`` itself when it holds none (the usual case: 0.2 µs for a
    usage of three counts), else a copy: the caller's dict is never changed.
    """
    # Type checks only: comparing a caller's value with {} could call its own
    # __eq__ (a numpy array's raises on truth). The usual payload holds no object.
    for value in payload.values():
        if type(value) is dict:
            break
    else:
        return payload
    cleaned: dict[str, Any] | None = None
    for key, value in payload.items():
        if type(value) is not dict:
            continue
        if not value:
            if key in _TOP_COUNT_NAMES:
                if cleaned is None:
                    cleaned = dict(payload)
                del cleaned[key]
            continue
        children = _CHILD_COUNT_NAMES.get(key)
        if children is None:
            continue
        drop = [n for n in children if type(value.get(n)) is dict and not value[n]]
        if drop:
            if cleaned is None:
                cleaned = dict(payload)
            cleaned[key] = {name: item for name, item in value.items() if name not in drop}
    return payload if cleaned is None else cleaned


#: The flat shape's count names (this project's README); ``total_tokens`` is
#: checked by the contract, never read.
_FLAT = frozenset(
    {"input_tokens", "cached_input_tokens", "cache_write_tokens", "output_tokens"}
    | {"reasoning_tokens", "total_tokens"}
)
#: Every other name :func:`token_counts` reads (parents of nested counts included).
_NOT_FLAT = frozenset(path if type(path) is str else path[0] for path in TOKEN_COUNT_PATHS) - _FLAT


def _flat_counts(payload: Mapping[str, Any]) -> TokenCounts:
    """:func:`token_counts` of a payload holding no count name beyond the flat shape's.

    The same reads, checks and messages in the same order, without looking up
    the other shapes' dozen names that cannot be there: 0.8 µs a record, not 2.
    """
    input_tokens = _count(payload, ("input_tokens",)) or 0
    cached = _count(payload, ("cached_input_tokens",)) or 0
    cache_write = _count(payload, ("cache_write_tokens",)) or 0
    if cached + cache_write > input_tokens:
        raise UsageError(
            "cached and cache-write tokens cannot exceed input tokens "
            f"({cached} + {cache_write} > {input_tokens})"
        )
    output_tokens = _count(payload, ("output_tokens",)) or 0
    reasoning = _count(payload, ("reasoning_tokens",)) or 0
    if reasoning > output_tokens:
        raise UsageError(
            f"reasoning tokens cannot exceed output tokens ({reasoning} > {output_tokens})"
        )
    return TokenCounts(input_tokens, output_tokens, cached, cache_write, reasoning)


def sound_flat_counts(payload: Mapping[str, Any], limit: int) -> TokenCounts | None:
    """The counts of a payload that is the flat shape and nothing else, when sound; else None.

    Sound: every key a flat count name (:data:`_FLAT`), every value an integer
    from 0 to ``limit``, cached within input and reasoning within output. Such a
    payload passes every contract check with these counts, so ``contract.py``
    takes this one pass (~0.6 µs) before its general checks (~3 µs: nesting,
    text, counts, then :func:`token_counts`); None sends a payload to them,
    which decide and word any problem.
    """
    if not _FLAT.issuperset(payload):
        return None
    for value in payload.values():
        if type(value) is not int or not 0 <= value <= limit:
            return None
    get = payload.get
    input_tokens = get("input_tokens", 0)
    cached = get("cached_input_tokens", 0)
    cache_write = get("cache_write_tokens", 0)
    output_tokens = get("output_tokens", 0)
    reasoning = get("reasoning_tokens", 0)
    if cached + cache_write > input_tokens or reasoning > output_tokens:
        return None
    return TokenCounts(input_tokens, output_tokens, cached, cache_write, reasoning)
