"""``python -m aicm_tasks`` is the ``aicm-tasks`` command."""

from aicm_tasks.cli import main

main()
