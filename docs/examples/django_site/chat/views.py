"""A view that calls an LLM and tracks its usage: one Redis LPUSH, no tracker object."""

import json

from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST
from openai import OpenAI

from aicm_tasks import track

llm = OpenAI()


@csrf_exempt  # a JSON API called by other services, not a form
@require_POST
def chat(request: HttpRequest) -> JsonResponse:
    body = json.loads(request.body)
    completion = llm.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": body["text"]}]
    )
    track.delay(
        f"openai::{completion.model}",
        completion.usage.model_dump(exclude_none=True) if completion.usage else {},
        response_id=completion.id,
        customer_key=body["customer"],
        context={"route": request.path},
    )
    return JsonResponse({"answer": completion.choices[0].message.content})
