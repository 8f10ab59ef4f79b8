"""Request bodies of the SDK-shaped endpoints: JSON read with a size bound, checked by pydantic.

A body that is not JSON, or does not fit the model, is a 400 whose ``detail``
names the fields at fault (never their values: a body may hold personal data).
So is a body with text no store can hold (a NUL, which PostgreSQL refuses with
an error that was a 500, and SQLite stored; an unpaired surrogate, which
neither can encode), checked as ``/track`` checks a record (the contract's
``value_problem``), before the model.
"""

from __future__ import annotations

import json
from typing import TypeVar

from pydantic import BaseModel
from pydantic import ValidationError as PydanticValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request

from aicm_tasks.contract import value_problem

#: Largest body of a customer or custom service, in bytes.
MAX_SDK_BODY_BYTES = 1024 * 1024

Model = TypeVar("Model", bound=BaseModel)


async def read_model(
    request: Request, model: type[Model], *, max_bytes: int = MAX_SDK_BODY_BYTES
) -> Model:
    """The request's JSON body as ``model``, or HTTPException 400 (413 when over
    ``max_bytes``)."""
    size = 0
    chunks: list[bytes] = []
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise HTTPException(413, f"request body is over {max_bytes} bytes")
        chunks.append(chunk)
    try:
        document = json.loads(b"".join(chunks))
    except (ValueError, RecursionError):
        # RecursionError: a body nested past the parser (200,000 brackets fit
        # in the size bound); it was a 500.
        raise HTTPException(400, "the body must be a JSON object") from None
    return validate_body(model, document)


def validate_body(model: type[Model], document: object) -> Model:
    """``document`` (parsed JSON) as ``model``, or HTTPException 400 naming each problem."""
    problem = value_problem(document)
    if problem is not None:
        where, what = problem
        raise HTTPException(400, f"body{where} {what}")
    try:
        return model.model_validate(document)
    except PydanticValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or 'body'}: {error['msg']}"
            for error in exc.errors()
        )
        raise HTTPException(400, problems) from None
