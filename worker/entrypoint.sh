#!/bin/sh
# Entry point of the aicm-tasks image: `worker` (default), `flower`, `serve`,
# or any other command as given.
set -eu
case "${1:-worker}" in
  worker)
    shift || true
    # exec: Celery gets SIGTERM directly and runs its warm shutdown.
    exec celery -A aicm_tasks worker --loglevel="${AICM_LOG_LEVEL:-INFO}" "$@" ;;
  flower)
    shift
    # Flower reads FLOWER_BASIC_AUTH from its environment; passed as an
    # argument it would show in `ps` and `docker top`. Without it Flower would
    # serve its pages to anyone and refuse its API: refuse to start instead.
    : "${FLOWER_BASIC_AUTH:?set FLOWER_BASIC_AUTH=user:password}"
    exec celery -A aicm_tasks flower --port=5555 "$@" ;;
  serve)
    shift
    exec aicm-tasks serve --host 0.0.0.0 --port 8000 "$@" ;;
  *)
    exec "$@" ;;
esac
