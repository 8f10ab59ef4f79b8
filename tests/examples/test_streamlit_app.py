"""docs/examples/streamlit_app.py through Streamlit's AppTest: reruns publish one
record per question asked, and nothing otherwise."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.support.examples import EXAMPLES, SERVICE_KEY, USAGE, Example
from tests.support.llm_stub import RECORDED_COMPLETION

pytestmark = pytest.mark.integration

#: Drives the app as a user would: it opens (a first run), fills in the form,
#: clicks twice (two reruns with a question) and reruns once with no click.
#: Run in its own process, configured by the environment like the real app.
DRIVER = """
import json
from streamlit.testing.v1 import AppTest

app = AppTest.from_file("streamlit_app.py", default_timeout=30).run()
app.text_input[0].input("umbrella").run()
app.text_input[1].input("What is batching?").run()
shown = []
for _ in range(2):
    app.button[0].click().run()
    shown.append([m.value for m in app.markdown])
app.run()
print(json.dumps({"shown": shown, "exceptions": [str(e.value) for e in app.exception]}))
"""


def test_each_question_asked_is_tracked_across_reruns(example: Example) -> None:
    pipeline, llm_stub = example.pipeline, example.llm
    done = subprocess.run(
        [sys.executable, "-c", DRIVER],
        cwd=EXAMPLES,
        env=example.env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["exceptions"] == []
    answer = RECORDED_COMPLETION["choices"][0]["message"]["content"]
    assert result["shown"] == [[answer], [answer]]

    # Two clicks, two LLM calls, two records; the other reruns tracked nothing.
    assert len(llm_stub.response_ids) == 2
    events = example.events(llm_stub.response_ids)
    for event in events.values():
        assert event["service_key"] == SERVICE_KEY
        assert event["payload"] == USAGE
        assert event["customer_key"] == "umbrella"
        assert event["context"] == {"app": "streamlit"}
    pipeline.wait_drained()
    assert pipeline.server.stats()["events"] == 2
