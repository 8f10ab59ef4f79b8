"""Developer tools: the ``aicm-tasks demo`` run and the local processes it starts."""
