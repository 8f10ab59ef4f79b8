"""Streamlit: track LLM usage from a script that reruns on every interaction.

    export AICM_BROKER_URL=redis://localhost:6379/0 OPENAI_API_KEY=...
    streamlit run streamlit_app.py

No ``st.cache_resource`` around tracking: the SDK's ``Tracker`` owns a delivery
thread and a queue, so it had to be created once per process and kept across
reruns. ``track`` owns neither: it is a module-level object, imported once per
process like any module, that publishes with one Redis LPUSH over a
connection pool opened on first use. Rerunning this script creates nothing new.
"""

import streamlit as st
from openai import OpenAI

from aicm_tasks import track

st.title("Ask the model")
customer = st.text_input("Customer", value="demo")
question = st.text_input("Question")

if st.button("Ask") and question:
    completion = OpenAI().chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": question}]
    )
    track.delay(
        f"openai::{completion.model}",
        completion.usage.model_dump(exclude_none=True) if completion.usage else {},
        response_id=completion.id,
        customer_key=customer,
        context={"app": "streamlit"},
    )
    st.markdown(completion.choices[0].message.content or "")
