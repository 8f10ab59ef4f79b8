"""Run the ``aicm-tasks`` command in a real subprocess."""

from __future__ import annotations

import os
import subprocess
import sys


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout_s: float = 300
) -> subprocess.CompletedProcess[str]:
    """``python -m aicm_tasks ARGS`` with ``env`` added to this environment."""
    return subprocess.run(
        [sys.executable, "-m", "aicm_tasks", *args],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
