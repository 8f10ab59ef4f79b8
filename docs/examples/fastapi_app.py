"""FastAPI: track LLM usage from a route, or from one middleware.

    export AICM_BROKER_URL=redis://localhost:6379/0 OPENAI_API_KEY=...
    uvicorn fastapi_app:app

No lifespan, no tracker object to start or close: ``track`` publishes with one
Redis LPUSH (about 0.1 ms) and a ``celery -A aicm_tasks worker`` delivers.
"""

from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request, Response
from openai import AsyncOpenAI
from pydantic import BaseModel

from aicm_tasks import track

app = FastAPI()
llm = AsyncOpenAI()


class Prompt(BaseModel):
    text: str
    customer: str


# 1. Track in the route itself.
@app.post("/chat")
async def chat(prompt: Prompt) -> dict[str, str | None]:
    completion = await llm.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": prompt.text}]
    )
    track.delay(
        f"openai::{completion.model}",
        completion.usage.model_dump(exclude_none=True) if completion.usage else {},
        response_id=completion.id,  # the LLM's id: a retried publish is not counted twice
        customer_key=prompt.customer,
        context={"route": "/chat"},
    )
    return {"answer": completion.choices[0].message.content}


# 2. Or: routes leave their completion on request.state, one middleware tracks it.
@app.middleware("http")
async def track_llm_usage(
    request: Request, call_next: Callable[[Request], Awaitable[Response]]
) -> Response:
    response = await call_next(request)
    completion = getattr(request.state, "completion", None)
    if completion is not None and completion.usage is not None:
        track.delay(
            f"openai::{completion.model}",
            completion.usage.model_dump(exclude_none=True),
            response_id=completion.id,
            customer_key=getattr(request.state, "customer", None),
            context={"route": request.url.path, "status": response.status_code},
        )
    return response


@app.post("/summarize")
async def summarize(prompt: Prompt, request: Request) -> dict[str, str | None]:
    completion = await llm.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": f"Summarize: {prompt.text}"}],
    )
    request.state.completion = completion
    request.state.customer = prompt.customer
    return {"summary": completion.choices[0].message.content}
