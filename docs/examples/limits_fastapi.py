"""FastAPI: refuse a request before spending on the LLM when a usage limit is tripped.

    export AICM_BROKER_URL=redis://localhost:6379/0 AICM_LIMITS_ENABLED=true OPENAI_API_KEY=...
    uvicorn limits_fastapi:app

``check_limits_async`` reads this process's snapshot of the triggered limits,
which the workers keep in Redis from the server's answers: a lookup, not a
round trip, and the same answer in every process and host (docs/limits.md).
"""

import contextlib

from fastapi import FastAPI, HTTPException
from openai import AsyncOpenAI
from pydantic import BaseModel

from aicm_tasks import UsageLimitExceeded, check_limits_async, track_async

app = FastAPI()
llm = AsyncOpenAI()


class Prompt(BaseModel):
    text: str
    customer: str


@app.post("/chat")
async def chat(prompt: Prompt) -> dict[str, str | None]:
    # Before the money is spent. No service key given: any limit of this
    # customer counts (the SDK's rule: a key not given matches any).
    try:
        await check_limits_async(customer_key=prompt.customer)
    except UsageLimitExceeded as exc:
        reasons = [str(limit.limit_message or limit.limit_id) for limit in exc.triggered_limits]
        raise HTTPException(status_code=429, detail=reasons) from exc
    completion = await llm.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": prompt.text}]
    )
    # With AICM_LIMITS_ENABLED a record that trips a limit is published, then
    # raises: this call is paid for and tracked; the check above refuses the next.
    with contextlib.suppress(UsageLimitExceeded):
        await track_async(
            f"openai::{completion.model}",
            completion.usage.model_dump(exclude_none=True) if completion.usage else {},
            response_id=completion.id,
            customer_key=prompt.customer,
        )
    return {"answer": completion.choices[0].message.content}
