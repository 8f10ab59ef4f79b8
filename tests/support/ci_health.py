"""``.ci/rabbitmq_health.py`` loaded as a module (``.ci`` is not a package: CI runs
the file with the system ``python3`` before the venv exists)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

#: The script CI runs.
SCRIPT = Path(__file__).resolve().parents[2] / ".ci" / "rabbitmq_health.py"


def load_ci_health() -> ModuleType:
    """Import :data:`SCRIPT` once, as ``ci_rabbitmq_health``."""
    name = "ci_rabbitmq_health"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
