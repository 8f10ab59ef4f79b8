"""Settings of a minimal Django project that tracks LLM usage with aicm-tasks.

    export AICM_BROKER_URL=redis://localhost:6379/0 OPENAI_API_KEY=...
    python manage.py runserver

aicm-tasks is not a Django app: nothing goes in INSTALLED_APPS, it has no
models or migrations. It reads its AICM_* environment variables once, when a
view first imports it; a web process needs only AICM_BROKER_URL (the API key
stays with the worker).
"""

import os

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "dev-only-not-secret")
DEBUG = os.environ.get("DJANGO_DEBUG") == "1"
ALLOWED_HOSTS = ["localhost", "127.0.0.1"]
INSTALLED_APPS = ["chat"]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
]
ROOT_URLCONF = "chatsite.urls"
DATABASES: dict[str, dict[str, str]] = {}
USE_TZ = True

# The library adds no log handlers. Route its logger to Django's console so
# that warnings (Redis unreachable, records kept in the local spool) are seen.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"aicm_tasks": {"handlers": ["console"], "level": "WARNING"}},
}
