"""What lives in the broker and the atomic moves between its keys.

Key names, the Lua scripts that move records between the ready list, batch
keys, the schedule and the dead letters, the message format, and the figures
that ``status`` and ``monitor`` read. Imported by the producer, the worker and
the CLI; imports none of them.
"""
