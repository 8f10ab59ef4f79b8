"""The one settings object: every ``AICM_*`` environment variable, validated when loaded.

Producers need only ``AICM_BROKER_URL``; everything else is for the worker, the
CLI and the local server. ``docs/configuration.md`` has the same list as a table.
"""

from __future__ import annotations

import difflib
import functools
import json
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

import platformdirs
import pydantic_settings
from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from aicm_tasks.contract import API_KEY_ALIAS_PATTERN, MAX_RECORDS_PER_REQUEST
from aicm_tasks.errors import SettingsError
from aicm_tasks.redact import redact_url

logger = logging.getLogger(__name__)

DEFAULT_BROKER_URL = "redis://localhost:6379/0"
DEFAULT_API_BASE = "https://aicostmanager.com"
DEFAULT_API_URL = "/api/v1"
#: The Celery queue (and Redis list) that carries records.
DEFAULT_QUEUE = "aicm.tracking"

#: Variables the official ``aicostmanager`` SDK reads. Users migrating from it
#: still have them set, so they are not reported as misspellings.
SDK_VARIABLES = frozenset(
    {
        "AICM_INI_PATH",
        "AICM_DELIVERY_TYPE",
        "AICM_LOG_FILE",
        "AICM_LOG_LEVEL",
        "AICM_LOG_BODIES",
        "AICM_TIMEOUT",
        "AICM_POLL_INTERVAL",
        "AICM_BATCH_INTERVAL",
        "AICM_MAX_ATTEMPTS",
        "AICM_MAX_RETRIES",
        "AICM_DB_PATH",
        "AICM_IMMEDIATE_PAUSE_SECONDS",
        "AICM_LIMITS_ENABLED",
        "AICM_ENABLE_LIMITS",
        "AICM_RAISE_ON_ERROR",
    }
)

#: Variables of this prefix belong to the test suite (``AICM_TEST_REDIS_URL``),
#: not to aicm-tasks, so they are not reported as misspellings.
TEST_VARIABLE_PREFIX = "AICM_TEST_"

#: pydantic error types -> how the one-line message says them ({} is the limit).
_PROBLEMS = {
    "less_than_equal": "must be at most {le}",
    "less_than": "must be less than {lt}",
    "greater_than_equal": "must be at least {ge}",
    "greater_than": "must be more than {gt}",
    "int_parsing": "must be a whole number",
    "int_type": "must be a whole number",
    "int_from_float": "must be a whole number",
    "float_parsing": "must be a number",
    "float_type": "must be a number",
    "bool_parsing": "must be true or false (1/0, yes/no, on/off)",
    "bool_type": "must be true or false (1/0, yes/no, on/off)",
    "dict_type": "must be a JSON object",
    "string_type": "must be text",
    "missing": "must be set",
}

#: pydantic-settings' own message when a JSON variable does not parse.
_UNPARSED_FIELD = re.compile(r'error parsing value for field "(\w+)"')

PositiveSeconds = Annotated[float, Field(gt=0)]


#: Shortest ``AICM_ANONYMIZE_KEY`` accepted: 32 characters (``token_hex(16)``,
#: 128 bits when random).
MIN_ANONYMIZE_KEY_CHARS = 32


class Settings(BaseSettings):
    """aicm-tasks configuration, read from ``AICM_*`` environment variables.

    Every field maps to ``AICM_<FIELD NAME IN UPPER CASE>``; durations carry their
    unit in the name. Values are validated on load: an out-of-range value raises
    :class:`pydantic.ValidationError` naming the field; :meth:`from_env`, what
    every entry point uses, turns it into :class:`~aicm_tasks.errors.SettingsError`,
    one line naming the variable.
    """

    # An empty variable (AICM_METRICS_PORT=) counts as unset. Errors never echo
    # the value: it may be a key (AICM_API_KEYS) or a URL with a password.
    model_config = SettingsConfigDict(
        env_prefix="AICM_",
        extra="ignore",
        frozen=True,
        env_ignore_empty=True,
        hide_input_in_errors=True,
    )

    # -- broker (producers and workers) --------------------------------------
    broker_url: str = DEFAULT_BROKER_URL
    queue: str = DEFAULT_QUEUE
    #: Prefix of every Redis key aicm-tasks owns besides the queue itself.
    key_prefix: str = "aicm"
    #: Redis servers that hold the records instead of AICM_BROKER_URL (comma-separated
    #: URLs): standalone primaries, or a Redis Cluster's seed nodes with
    #: AICM_REDIS_CLUSTER. AICM_BROKER_URL stays Celery's broker. See broker/topology.py.
    shard_urls: Annotated[tuple[str, ...], NoDecode] = ()
    #: AICM_SHARD_URLS name a Redis Cluster (redis-py's cluster client).
    redis_cluster: bool = False
    #: How many shards hold the records; default one per URL of AICM_SHARD_URLS
    #: (one: today's key names), 3 on a cluster. Never lower it while shards hold records.
    shards: int | None = Field(default=None, ge=1, le=1024)
    #: Replicas that must acknowledge each publish and settle (WAIT); 0: off. See
    #: broker/replicas.py and docs/guarantees.md for what each costs and risks.
    replica_acks: int = Field(default=0, ge=0, le=5)
    #: How long a publish or settle waits for those acknowledgements.
    replica_ack_timeout_s: PositiveSeconds = 0.2
    #: Upper bound on one publish (connect + LPUSH) before it fails.
    publish_timeout_s: PositiveSeconds = 1.0
    #: Largest serialised record accepted at the call site, in bytes.
    max_record_bytes: int = Field(default=32 * 1024, ge=256, le=1024 * 1024)
    #: Keep records in a local spool when the broker does not answer (see producer/spool/).
    spool_enabled: bool = True
    #: Where the spool database lives (a local disk); default: the user's cache directory.
    spool_dir: Path = Field(
        default_factory=lambda: Path(platformdirs.user_cache_dir("aicm-tasks")) / "spool"
    )
    #: Spool size over which ``track`` raises SpoolFullError; at least a few SQLite pages.
    spool_max_bytes: int = Field(default=256 * 1024 * 1024, ge=64 * 1024)
    #: Payload and context fields whose values are replaced before a record leaves
    #: the process (comma-separated names, or a JSON list); see producer/anonymize.py.
    anonymize_fields: Annotated[tuple[str, ...], NoDecode] = ()
    #: The key of the keyed hash that replaces them (HMAC-SHA256); never published.
    anonymize_key: SecretStr | None = None

    # -- delivery (workers) --------------------------------------------------
    api_key: SecretStr | None = None
    #: More keys, by alias (a JSON object, ``{"team-a": "key", ...}``): a record
    #: published with ``api_key_alias="team-a"`` is delivered with that key.
    api_keys: dict[str, SecretStr] = Field(default_factory=dict)
    api_base: str = DEFAULT_API_BASE
    api_url: str = DEFAULT_API_URL
    batch_size: int = Field(default=500, ge=1, le=MAX_RECORDS_PER_REQUEST)
    flush_interval_s: PositiveSeconds = 1.0
    http_timeout_s: PositiveSeconds = 30.0
    #: Delivery threads per worker process; each holds at most one batch.
    delivery_concurrency: int = Field(default=4, ge=1, le=64)
    max_retries: int = Field(default=25, ge=0, le=1000)
    retry_base_s: PositiveSeconds = 1.0
    retry_max_s: PositiveSeconds = 300.0
    #: How long records wait before another try after a 401/403 (not counted as an attempt).
    auth_retry_interval_s: PositiveSeconds = 60.0
    #: A batch held by a worker that stopped renewing its lease for this long goes back
    #: to the queue for any worker to deliver.
    redelivery_timeout_s: Annotated[float, Field(ge=2)] = 60.0

    # -- usage limits (docs/limits.md) ------------------------------------------
    #: Raise UsageLimitExceeded from track.delay / track_async / track_many /
    #: CeleryDelivery for a record that matches a triggered limit (the SDK's variable).
    limits_enabled: bool = False
    #: How old a producer's in-process snapshot of the limits may get before it is
    #: read again from the broker, in milliseconds (a pub/sub nudge refreshes it sooner).
    limits_refresh_ms: int = Field(default=500, ge=10, le=3_600_000)
    #: How often a worker asks the server for ``GET /triggered-limits`` (with limits on).
    limits_poll_interval_s: PositiveSeconds = 30.0
    #: A PEM public key to verify triggered-limits tokens with, instead of the key
    #: the server sends beside them (pinning: a forged answer cannot bring its own key).
    limits_public_key: str | None = None

    # -- visibility ----------------------------------------------------------------
    #: Send each settled batch to Flower as a task (Celery task events).
    events_enabled: bool = True
    #: Include usage payloads and context in what Flower shows (off: keys and ids only).
    events_show_payloads: bool = False
    #: Port of the worker's Prometheus /metrics endpoint; off when unset.
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    #: How long records may wait undelivered, /track refuse the key, or transport
    #: errors dominate before ``aicm-tasks status`` says unhealthy (rate buckets
    #: are kept an hour, hence the upper bound).
    health_window_s: Annotated[float, Field(ge=1, le=3600)] = 120.0

    # -- local server ----------------------------------------------------------
    server_api_key: SecretStr | None = None
    #: An SQLite file path, or a ``postgresql://`` URL for the PostgreSQL ledger.
    server_db: str = "aicm-local.sqlite3"
    #: Where the local server keeps the key pair that signs triggered limits;
    #: default: beside an SQLite ledger, the user's data directory for PostgreSQL.
    server_keys_dir: Path | None = None
    #: Where ``aicm-tasks costs`` finds the local server.
    server_url: str = "http://127.0.0.1:8000"
    #: The monthly budget of all spend, in USD, for ``/budget-status``; none when unset.
    monthly_budget_usd: float | None = Field(default=None, ge=0)
    #: Monthly budgets per customer key, in USD, as JSON: ``{"acme": 250}``.
    customer_budgets_usd: dict[str, Annotated[float, Field(ge=0)]] = Field(default_factory=dict)

    @field_validator("shard_urls", mode="before")
    @classmethod
    def _split_urls(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(url.strip() for url in value.split(",") if url.strip())
        return value

    @field_validator("shard_urls")
    @classmethod
    def _check_shard_urls(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for url in value:
            problem = url_problem(url, ("redis", "rediss", "unix"))
            if problem:
                raise ValueError(
                    f"{redact_url(url)} is not a usable shard URL: {problem}. Percent-encode "
                    "/ # ? @ : in the password (urllib.parse.quote(password, safe=''))"
                )
        if len(set(value)) != len(value):
            raise ValueError("a URL is listed twice: list each Redis once")
        return value

    @model_validator(mode="after")
    def _check_shards(self) -> Settings:
        if self.redis_cluster and not self.shard_urls:
            raise ValueError(
                "AICM_REDIS_CLUSTER=true needs AICM_SHARD_URLS, the cluster's node URLs; "
                "AICM_BROKER_URL stays Celery's broker (a standalone Redis for events)"
            )
        if self.records_on_rabbitmq and (self.shards or 1) > 1:
            raise ValueError(
                f"AICM_SHARDS={self.shards} needs Redis: on RabbitMQ (AICM_BROKER_URL="
                "amqp://...) the records live in one quorum queue, which RabbitMQ replicates"
            )
        if self.records_on_rabbitmq and self.limits_enabled:
            raise ValueError(
                "AICM_LIMITS_ENABLED needs Redis for now: on RabbitMQ (AICM_BROKER_URL="
                "amqp://...) triggered limits have no store yet (docs/limits.md); unset it"
            )
        if self.records_on_rabbitmq and self.replica_acks:
            raise ValueError(
                "AICM_REPLICA_ACKS is Redis's WAIT: on RabbitMQ a publisher confirm of a "
                "quorum queue already means a majority of its replicas hold the record"
            )
        if self.replica_acks and self.replica_ack_timeout_s >= self.publish_timeout_s / 2:
            raise ValueError(
                f"AICM_REPLICA_ACK_TIMEOUT_S={self.replica_ack_timeout_s:g} must be under half "
                f"of AICM_PUBLISH_TIMEOUT_S={self.publish_timeout_s:g} (one publish attempt)"
            )
        if (
            self.shards is not None
            and not self.redis_cluster
            and self.shards < len(self.shard_urls)
        ):
            raise ValueError(
                f"AICM_SHARDS={self.shards} leaves some of the {len(self.shard_urls)} "
                "AICM_SHARD_URLS unused: set at least one shard per URL"
            )
        return self

    @property
    def records_on_rabbitmq(self) -> bool:
        """Whether records travel through RabbitMQ: AICM_BROKER_URL is ``amqp://`` or
        ``amqps://`` and no AICM_SHARD_URLS put them on Redis instead (a cluster
        deployment may keep RabbitMQ as Celery's broker)."""
        return urlsplit(self.broker_url).scheme in ("amqp", "amqps") and not self.shard_urls

    @field_validator("anonymize_fields", mode="before")
    @classmethod
    def _split_fields(cls, value: object) -> object:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return tuple(name.strip() for name in text.split(",") if name.strip())
        return value

    @model_validator(mode="after")
    def _check_anonymization(self) -> Settings:
        if self.anonymize_fields and self.anonymize_key is None:
            raise ValueError(
                "AICM_ANONYMIZE_FIELDS needs AICM_ANONYMIZE_KEY, the key of the keyed hash "
                "that replaces the values (e.g. python -c 'import secrets; "
                "print(secrets.token_hex(32))')"
            )
        key = self.anonymize_key
        if key is not None and len(key.get_secret_value()) < MIN_ANONYMIZE_KEY_CHARS:
            # A guessable key lets anyone hash candidate values under it and find
            # a user's digest: the hash then hides nothing.
            raise ValueError(
                f"AICM_ANONYMIZE_KEY must be at least {MIN_ANONYMIZE_KEY_CHARS} characters, "
                "random (e.g. python -c 'import secrets; print(secrets.token_hex(32))')"
            )
        return self

    @field_validator("limits_public_key")
    @classmethod
    def _check_limits_public_key(cls, value: str | None) -> str | None:
        # Pinned, it is the only key tokens verify with: one that cannot be read
        # made every genuine token "not verify", and no limit was ever enforced.
        # Imported here: only a process that pins a key pays for cryptography.
        if value is None:
            return value
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

        try:
            key = serialization.load_pem_public_key(value.encode())
        except (ValueError, TypeError):
            key = None
        if not isinstance(key, RSAPublicKey):
            raise ValueError(
                "not an RSA public key in PEM (-----BEGIN PUBLIC KEY-----, real newlines, not \\n)"
            )
        return value

    @field_validator("api_keys")
    @classmethod
    def _check_aliases(cls, value: dict[str, SecretStr]) -> dict[str, SecretStr]:
        for alias, key in value.items():
            if not API_KEY_ALIAS_PATTERN.fullmatch(alias):
                raise ValueError(
                    f"{alias!r} is not an alias name: 1-64 letters, digits, '_', '.' or '-'"
                )
            if not key.get_secret_value():
                raise ValueError(f"the key of alias {alias!r} is empty")
        return value

    @field_validator("broker_url")
    @classmethod
    def _check_broker_url(cls, value: str) -> str:
        problem = url_problem(value, ("redis", "rediss", "unix", "amqp", "amqps"))
        if problem:
            # Only the redacted URL: urllib's own error would quote part of the password.
            raise ValueError(
                f"{redact_url(value)} is not a usable broker URL: {problem}. Percent-encode "
                "/ # ? @ : in the password (urllib.parse.quote(password, safe=''))"
            )
        return value

    @field_validator("server_db")
    @classmethod
    def _check_server_db(cls, value: str) -> str:
        if "://" not in value or value.startswith("sqlite:"):
            return value
        problem = url_problem(value, ("postgresql", "postgres", "postgresql+psycopg"))
        if problem:
            raise ValueError(
                f"{redact_url(value)} is not a usable database URL: {problem}. Percent-encode "
                "/ # ? @ : in the password"
            )
        return value

    @field_validator("api_base", "api_url", "server_url")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        return value.rstrip("/")

    @property
    def track_url(self) -> str:
        """The full ``POST /track`` URL: ``{api_base}{api_url}/track``."""
        return f"{self.api_base}{self.api_url}/track"

    @classmethod
    def from_env(cls) -> Settings:
        """Load settings from the environment, warning (once per process) about
        unknown ``AICM_*`` names.

        Raises :class:`~aicm_tasks.errors.SettingsError`, one line naming each bad
        variable (``AICM_BATCH_SIZE must be at most 1000``), never its value.
        """
        warn_unknown_variables(os.environ, once=True)
        try:
            return cls()
        except ValidationError as exc:
            # from None: pydantic's multi-line dump is what the one line replaces.
            raise settings_error(exc) from None
        except pydantic_settings.SettingsError as exc:  # a JSON variable that does not parse
            raise settings_error(exc) from None


def settings_error(exc: ValidationError | pydantic_settings.SettingsError) -> SettingsError:
    """One line naming each variable ``exc`` complains about, and what it must be.

    Never quotes the value (it may be a key): the messages of our own validators
    already redact it, pydantic's are replaced by the phrases of ``_PROBLEMS``.
    """
    if isinstance(exc, pydantic_settings.SettingsError):
        found = _UNPARSED_FIELD.search(str(exc))
        name = f"AICM_{found.group(1).upper()}" if found else "an AICM_* variable"
        return SettingsError(f"{name} must be valid JSON", (name,) if found else ())
    problems: list[str] = []
    names: list[str] = []
    for error in exc.errors(include_url=False, include_input=False):
        location = [str(part) for part in error["loc"]]
        if not location:
            # A rule across variables (model_validator): its message names them.
            problems.append(str(error["msg"]).removeprefix("Value error, "))
            continue
        name = f"AICM_{location[0].upper()}"
        where = f" (key {location[1]!r})" if len(location) > 1 else ""
        problems.append(f"{name}{where}{_problem(error)}")
        names.append(name)
    return SettingsError("; ".join(problems), tuple(dict.fromkeys(names)))


def _problem(error: Mapping[str, Any]) -> str:
    context = {key: _number(value) for key, value in (error.get("ctx") or {}).items()}
    phrase = _PROBLEMS.get(str(error["type"]))
    if phrase is not None:
        try:
            return " " + phrase.format(**context)
        except KeyError:
            pass
    message = str(error["msg"]).removeprefix("Value error, ")
    if message.startswith("Input should"):
        return " should" + message.removeprefix("Input should")
    return f": {message}"


def _number(value: Any) -> Any:
    """``1000.0`` -> ``1000``: a limit reads as the user would write it."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def url_problem(url: str, schemes: tuple[str, ...]) -> str | None:
    """Why ``url`` cannot be what it claims to be (None when it can).

    Catches what an unencoded ``/``, ``#`` or ``?`` in a password does: the
    host part ends early, so the "port" is a piece of the password or the host
    is missing, and the client would connect somewhere else or fail with an
    error that quotes that piece.
    """
    parts = urlsplit(url)
    if parts.scheme not in schemes:
        return f"the scheme must be one of {', '.join(s + '://' for s in schemes)}"
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        return "what follows the host is not a port number"
    if parts.scheme == "unix":
        return None if parts.path else "it names no socket path"
    if not parts.hostname:
        return "it names no host"
    if parts.fragment:
        return "it holds a '#'"
    return None


def warn_unknown_variables(
    environ: os._Environ[str] | Mapping[str, str], *, once: bool = False
) -> list[str]:
    """Log a warning for each ``AICM_*`` variable that is neither ours nor the SDK's
    (nor the test suite's ``AICM_TEST_*``).

    A misspelt variable would otherwise be ignored in silence. This warns rather
    than fails because other tools (the official SDK) share the prefix. With
    ``once``, a name already warned about in this process is not warned about
    again (settings are read by the CLI, the app and the server alike).
    Returns the unknown names.
    """
    known = {f"AICM_{name.upper()}" for name in Settings.model_fields}
    unknown = sorted(
        name
        for name in environ
        if name.startswith("AICM_")
        and name not in known
        and name not in SDK_VARIABLES
        and not name.startswith(TEST_VARIABLE_PREFIX)
    )
    for name in unknown:
        close = difflib.get_close_matches(name, sorted(known), n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        if once:
            _warn_once(name, hint)
        else:
            logger.warning("unknown setting %s is ignored%s", name, hint)
    return unknown


@functools.cache
def _warn_once(name: str, hint: str) -> None:
    # The cache is the "already warned" record: one entry per unknown name.
    logger.warning("unknown setting %s is ignored%s", name, hint)
