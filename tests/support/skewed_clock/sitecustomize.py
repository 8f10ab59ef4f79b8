"""Shifts this process's wall clock by ``AICM_TEST_CLOCK_SKEW_S`` seconds.

A worker started with this folder on ``PYTHONPATH`` behaves as one on a host
whose clock is off by that much: ``time.time`` (and ``time.time_ns``) are
shifted from the first import on; the monotonic clock is not, as on a real host.
"""

from __future__ import annotations

import os
import time

_SKEW_S = float(os.environ.get("AICM_TEST_CLOCK_SKEW_S") or 0)

if _SKEW_S:
    _real_time = time.time
    _real_time_ns = time.time_ns

    def _skewed_time() -> float:
        return _real_time() + _SKEW_S

    def _skewed_time_ns() -> int:
        return _real_time_ns() + int(_SKEW_S * 1e9)

    time.time = _skewed_time
    time.time_ns = _skewed_time_ns
