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
    exec celery -A aicm_tasks flower --port=5555 --basic-auth="${FLOWER_BASIC_AUTH:?set FLOWER_BASIC_AUTH=user:password}" "$@" ;;
  serve)
    shift
    exec aicm-tasks serve --host 0.0.0.0 --port 8000 "$@" ;;
  *)
    exec "$@" ;;
esac
