"""Track an LLM response (or a stream of chunks) without the SDK's ``Tracker``.

``track_llm_usage("openai_chat", response)`` reads the usage with the official
SDK's own extractors (``aicostmanager.usage_utils``: OpenAI chat and responses,
Anthropic, Gemini, Bedrock, Fireworks, and a generic fallback) and publishes it
with ``track``. Given an API id rather than a service key, the service key is
built from the response's model as the SDK does (``openai_chat`` + ``gpt-4o-mini``
-> ``openai::gpt-4o-mini``). The record's ``response_id`` defaults to the LLM
response's own id, so tracking one response twice is one event.

A stream is tracked once, when it ends (or is closed early: its input was
billed), with the usage of all its chunks merged, later values winning. That
is what Anthropic's raw stream needs (input tokens in ``message_start``, the
output count in ``message_delta``), and it gives OpenAI's final usage chunk and
Gemini's cumulative counts unchanged. Needs the extra ``aicm-tasks[sdk]``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterable, Generator, Iterable, Iterator
from datetime import datetime
from typing import Any

try:
    from aicostmanager.usage_utils import (
        API_TO_VENDOR,
        VENDOR_TO_API,
        get_streaming_usage_from_response,
        get_usage_from_response,
    )
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "track_llm_usage needs the official SDK: pip install 'aicm-tasks[sdk]'"
    ) from exc

from aicm_tasks.errors import RecordValueError
from aicm_tasks.producer.aio import track_async
from aicm_tasks.producer.api import HasProducer, default_task

logger = logging.getLogger(__name__)

Timestamp = str | float | datetime | None


def api_id_of(service_key_or_api_id: str) -> str:
    """The SDK's API id for a service key's vendor (``openai::x`` -> ``openai_chat``),
    or the argument itself when it is already an API id."""
    vendor, sep, _ = service_key_or_api_id.partition("::")
    return VENDOR_TO_API.get(vendor, vendor) if sep else service_key_or_api_id


def service_key_for(service_key_or_api_id: str, model: str | None) -> str:
    """The service key: the argument if it is one, else ``vendor::model``."""
    if "::" in service_key_or_api_id:
        return service_key_or_api_id
    if not model:
        raise RecordValueError(
            "service_key",
            f"{service_key_or_api_id!r} is an API id and the response names no model; "
            "give a service key such as 'openai::gpt-4o-mini'",
        )
    return f"{API_TO_VENDOR.get(service_key_or_api_id, service_key_or_api_id)}::{model}"


def _attribute(obj: Any, name: str) -> Any:
    if isinstance(obj, dict):
        return obj.get(name)
    return getattr(obj, name, None)


def _nested(obj: Any) -> Iterator[Any]:
    """``obj`` itself, then its ``message`` (Anthropic) and ``response`` (OpenAI
    Responses events): the places a chunk keeps its id and model."""
    yield obj
    for inner in ("message", "response"):
        value = _attribute(obj, inner)
        if value is not None and not isinstance(value, str | bytes):
            yield value


def response_id_of(response: Any) -> str | None:
    """The LLM response's own id (``id``, ``response_id``, ``responseId``), if any."""
    for obj in _nested(response):
        for name in ("id", "response_id", "responseId"):
            value = _attribute(obj, name)
            if isinstance(value, str) and value:
                return value
    return None


def model_of(response: Any) -> str | None:
    """The model a response or chunk names, if any."""
    for obj in _nested(response):
        value = _attribute(obj, "model")
        if isinstance(value, str) and value:
            return value
    return None


def _record_fields(
    service_key_or_api_id: str,
    usage: dict[str, Any],
    model: str | None,
    response_id: str | None,
    timestamp: Timestamp,
    customer_key: str | None,
    context: dict[str, Any] | None,
    api_key_alias: str | None,
) -> dict[str, Any]:
    return {
        "service_key": service_key_for(service_key_or_api_id, model),
        "usage": usage,
        "response_id": response_id,
        "timestamp": timestamp,
        "customer_key": customer_key,
        "context": context,
        "api_key_alias": api_key_alias,
    }


def _attach(response: Any, response_id: str) -> None:
    # As the SDK does: a convenience, never an error (frozen or slotted objects).
    with contextlib.suppress(Exception):
        response.aicm_response_id = response_id


def _no_usage(what: str, service_key_or_api_id: str) -> None:
    hint = (
        "; OpenAI streams report usage only with stream_options={'include_usage': True}"
        if what == "stream" and api_id_of(service_key_or_api_id).startswith("openai")
        else ""
    )
    logger.warning(
        "no usage found in the %s for %s: nothing tracked%s", what, service_key_or_api_id, hint
    )


def response_fields(
    service_key_or_api_id: str,
    response: Any,
    *,
    response_id: str | None = None,
    timestamp: Timestamp = None,
    customer_key: str | None = None,
    context: dict[str, Any] | None = None,
    api_key_alias: str | None = None,
) -> dict[str, Any] | None:
    """The record's keyword fields for one LLM response, or None (and a warning)
    when it has no usage. Pure: :func:`track_llm_usage` and its async twin publish
    what this returns."""
    usage = get_usage_from_response(response, api_id_of(service_key_or_api_id))
    if not usage:
        _no_usage("response", service_key_or_api_id)
        return None
    return _record_fields(
        service_key_or_api_id,
        usage,
        model_of(response),
        response_id or response_id_of(response),
        timestamp,
        customer_key,
        context,
        api_key_alias,
    )


def _publish(fields: dict[str, Any], task: HasProducer | None) -> str:
    return (task or default_task()).producer.track(fields)


async def _publish_async(fields: dict[str, Any], task: HasProducer | None) -> str:
    return await track_async(task=task, **fields)


@contextlib.contextmanager
def _kept_quiet_if_left_early(completed: bool) -> Iterator[None]:
    """Around a stream's final publish: a tracking error raises when the stream
    ran to its end, and is only logged when it was left early, so that it never
    replaces the caller's own exception (or ``GeneratorExit``)."""
    try:
        yield
    except Exception:
        if completed:
            raise
        logger.exception("usage of a stream left early was not tracked")


def track_llm_usage(
    service_key_or_api_id: str,
    response: Any,
    *,
    response_id: str | None = None,
    timestamp: Timestamp = None,
    customer_key: str | None = None,
    context: dict[str, Any] | None = None,
    api_key_alias: str | None = None,
    task: HasProducer | None = None,
) -> Any:
    """Publish the usage of one LLM response; returns the response (for chaining).

    ``service_key_or_api_id`` is a service key (``openai::gpt-4o-mini``) or an SDK
    API id (``openai_chat``, ``openai_responses``, ``anthropic``, ``gemini``,
    ``amazon-bedrock``, ``fireworks-ai``). ``response_id`` defaults to the
    response's id. The record's ``response_id`` is set on the response as
    ``aicm_response_id`` when it can be. ``api_key_alias`` names the workers'
    key that delivers it (``AICM_API_KEYS``). A response without usage is not
    tracked (a warning is logged).
    """
    fields = response_fields(
        service_key_or_api_id,
        response,
        response_id=response_id,
        timestamp=timestamp,
        customer_key=customer_key,
        context=context,
        api_key_alias=api_key_alias,
    )
    if fields is not None:
        _attach(response, _publish(fields, task))
    return response


async def track_llm_usage_async(
    service_key_or_api_id: str,
    response: Any,
    *,
    response_id: str | None = None,
    timestamp: Timestamp = None,
    customer_key: str | None = None,
    context: dict[str, Any] | None = None,
    api_key_alias: str | None = None,
    task: HasProducer | None = None,
) -> Any:
    """:func:`track_llm_usage` for async code: the publish runs off the event loop."""
    fields = response_fields(
        service_key_or_api_id,
        response,
        response_id=response_id,
        timestamp=timestamp,
        customer_key=customer_key,
        context=context,
        api_key_alias=api_key_alias,
    )
    if fields is not None:
        _attach(response, await _publish_async(fields, task))
    return response


class StreamUsage:
    """What a stream's chunks said so far: merged usage, first id, first model."""

    def __init__(self, service_key_or_api_id: str, stream: Any) -> None:
        self.service_key_or_api_id = service_key_or_api_id
        self.api_id = api_id_of(service_key_or_api_id)
        self.usage: dict[str, Any] = {}
        self.response_id: str | None = None
        self.model: str | None = model_of(stream)

    def add(self, chunk: Any) -> None:
        if self.response_id is None:
            self.response_id = response_id_of(chunk)
        if self.model is None:
            self.model = model_of(chunk)
        usage = get_streaming_usage_from_response(chunk, self.api_id)
        if isinstance(usage, dict):
            # The SDK's extractors render a missing nested object as {}.
            self.usage.update({k: v for k, v in usage.items() if v is not None and v != {}})

    def fields(
        self,
        response_id: str | None,
        timestamp: Timestamp,
        customer_key: str | None,
        context: dict[str, Any] | None,
        api_key_alias: str | None,
    ) -> dict[str, Any] | None:
        """The record's fields, or None (and a warning) when no chunk had usage."""
        if not self.usage:
            _no_usage("stream", self.service_key_or_api_id)
            return None
        return _record_fields(
            self.service_key_or_api_id,
            self.usage,
            self.model,
            response_id or self.response_id,
            timestamp,
            customer_key,
            context,
            api_key_alias,
        )


def track_llm_stream_usage(
    service_key_or_api_id: str,
    stream: Iterable[Any],
    *,
    response_id: str | None = None,
    timestamp: Timestamp = None,
    customer_key: str | None = None,
    context: dict[str, Any] | None = None,
    api_key_alias: str | None = None,
    task: HasProducer | None = None,
) -> Generator[Any, None, None]:
    """Yield the stream's chunks unchanged; publish its usage once, when it ends.

    A stream left early (``break``, an exception, ``close()``) is tracked with
    the usage it had reached; a tracking error then never replaces the caller's
    own exception. Arguments as in :func:`track_llm_usage`.
    """
    seen = StreamUsage(service_key_or_api_id, stream)
    completed = False
    try:
        for chunk in stream:
            seen.add(chunk)
            yield chunk
        completed = True
    finally:
        with _kept_quiet_if_left_early(completed):
            fields = seen.fields(response_id, timestamp, customer_key, context, api_key_alias)
            if fields is not None:
                _publish(fields, task)


async def track_llm_stream_usage_async(
    service_key_or_api_id: str,
    stream: AsyncIterable[Any],
    *,
    response_id: str | None = None,
    timestamp: Timestamp = None,
    customer_key: str | None = None,
    context: dict[str, Any] | None = None,
    api_key_alias: str | None = None,
    task: HasProducer | None = None,
) -> AsyncGenerator[Any, None]:
    """:func:`track_llm_stream_usage` for an async stream; the publish runs off the loop."""
    seen = StreamUsage(service_key_or_api_id, stream)
    completed = False
    try:
        async for chunk in stream:
            seen.add(chunk)
            yield chunk
        completed = True
    finally:
        with _kept_quiet_if_left_early(completed):
            fields = seen.fields(response_id, timestamp, customer_key, context, api_key_alias)
            if fields is not None:
                await _publish_async(fields, task)
