"""Flask: track LLM usage from a view.

    export AICM_BROKER_URL=redis://localhost:6379/0 OPENAI_API_KEY=...
    flask --app flask_app run          # or: gunicorn -w 4 flask_app:app

``track`` connects to Redis on first use in each process, so it is safe under
gunicorn's pre-fork workers; there is nothing to set up or tear down.
"""

from flask import Flask, request
from openai import OpenAI

from aicm_tasks import track

app = Flask(__name__)
llm = OpenAI()


@app.post("/chat")
def chat() -> dict[str, str | None]:
    body = request.get_json()
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
    return {"answer": completion.choices[0].message.content}
