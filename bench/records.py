"""The one sample record every contender publishes, so bytes and work match."""

from __future__ import annotations

import time
import uuid
from typing import Any

#: The API key every contender sends; the stub does not check it.
API_KEY = "bench-key"

#: A realistic record: an LLM call's token counts for one customer.
SERVICE_KEY = "openai::gpt-4o-mini"
CUSTOMER_KEY = "customer-0042"
USAGE: dict[str, Any] = {
    "input_tokens": 1234,
    "output_tokens": 321,
    "total_tokens": 1555,
    "cached_input_tokens": 0,
}
CONTEXT: dict[str, Any] = {"feature": "chat", "env": "bench"}


def record_dict(response_id: str | None = None) -> dict[str, Any]:
    """The record as the ``/track`` contract carries it (what aicm-tasks builds)."""
    return {
        "service_key": SERVICE_KEY,
        "response_id": response_id or uuid.uuid4().hex,
        "timestamp": repr(time.time()),
        "payload": USAGE,
        "customer_key": CUSTOMER_KEY,
        "context": CONTEXT,
    }


def track_fields() -> dict[str, Any]:
    """The keyword fields of ``track.delay`` / one entry of ``track_many``."""
    return {
        "service_key": SERVICE_KEY,
        "usage": USAGE,
        "customer_key": CUSTOMER_KEY,
        "context": CONTEXT,
    }
