"""Your own Celery app: a task calls an LLM and tracks its usage from inside your worker.

    export CELERY_BROKER_URL=redis://localhost:6379/0 AICM_BROKER_URL=redis://localhost:6379/0
    export OPENAI_API_KEY=...
    celery -A celery_llm worker                  # your tasks
    AICM_API_KEY=... celery -A aicm_tasks worker  # delivers the usage records

and from your web app: ``summarize.delay("some long text", customer="acme-corp")``.

Your task publishes one usage record and returns: it never waits on /track, and
a /track outage never fails or retries it (which would call the LLM again).
Both apps can share one Redis: the aicm-tasks worker consumes only its own queues.
"""

import os

from celery import Celery
from openai import OpenAI

from aicm_tasks import track

app = Celery("celery_llm", broker=os.environ.get("CELERY_BROKER_URL", "redis://localhost:6379/0"))
llm = OpenAI()


@app.task
def summarize(text: str, customer: str) -> str | None:
    completion = llm.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": f"Summarize: {text}"}]
    )
    track.delay(
        f"openai::{completion.model}",
        completion.usage.model_dump(exclude_none=True) if completion.usage else {},
        response_id=completion.id,
        customer_key=customer,
        context={"task": "summarize", "task_id": summarize.request.id},
    )
    return completion.choices[0].message.content
