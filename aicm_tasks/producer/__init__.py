"""The web-process side: validate a record at the call site and publish it.

Runs in the caller's process (web request, script, async app): building a
record, one Redis round trip to publish it, the on-disk spool when the broker
is away, and the glue for async code, the official SDK and LLM responses.
"""
