"""Settings: every ``AICM_*`` variable's type, default and range, read from the environment.

The table below is the one in docs/configuration.md, as data: a variable added
to Settings without a row here (and there) fails
:func:`test_the_table_names_every_setting_and_docs_list_each`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from pydantic import SecretStr, ValidationError

from aicm_tasks.contract import MAX_RECORDS_PER_REQUEST
from aicm_tasks.errors import ConfigurationError, SettingsError
from aicm_tasks.settings import (
    SDK_VARIABLES,
    Settings,
    url_problem,
    warn_unknown_variables,
)

CONFIGURATION_MD = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


#: An RSA public key in PEM, as AICM_LIMITS_PUBLIC_KEY takes one.
PUBLIC_PEM = (
    rsa.generate_private_key(public_exponent=65537, key_size=2048)
    .public_key()
    .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    .decode()
)


class Row(NamedTuple):
    """One variable: its default, values it takes (as set -> as read), values it refuses."""

    field: str
    default: Any
    good: list[tuple[str, Any]]
    bad: list[str]


TABLE = [
    Row(
        "broker_url",
        "redis://localhost:6379/0",
        [("rediss://:pw@redis.internal:6380/2", "rediss://:pw@redis.internal:6380/2"),
         ("unix:///run/redis.sock", "unix:///run/redis.sock")],
        ["http://localhost:6379", "redis://:pa/ss@host:6379/0", "redis://", "redis://h/0#x"],
    ),
    Row("queue", "aicm.tracking", [("billing.q", "billing.q")], []),
    Row("key_prefix", "aicm", [("acme", "acme")], []),
    Row(
        "shard_urls",
        (),
        [("redis://a:6379/0, redis://b:6379/0", ("redis://a:6379/0", "redis://b:6379/0"))],
        ["http://a:6379", "redis://a:6379/0,redis://a:6379/0", "redis://:pa/ss@host:6379/0"],
    ),
    Row("redis_cluster", False, [], ["maybe"]),
    Row("shards", None, [("1", 1), ("1024", 1024)], ["0", "1025", "two"]),
    Row("replica_acks", 0, [("1", 1), ("5", 5)], ["-1", "6"]),
    Row("replica_ack_timeout_s", 0.2, [("0.05", 0.05)], ["0"]),
    Row("publish_timeout_s", 1.0, [("0.25", 0.25)], ["0", "-1", "soon"]),
    Row("max_record_bytes", 32768, [("256", 256), ("1048576", 1048576)], ["255", "1048577", "1e3x"]),
    Row("spool_enabled", True, [("false", False), ("0", False), ("yes", True)], ["maybe"]),
    Row("spool_max_bytes", 256 * 1024 * 1024, [("65536", 65536)], ["65535"]),
    # Read with AICM_ANONYMIZE_KEY only: test_anonymized_fields_are_read_...
    Row("anonymize_fields", (), [], ['["unclosed']),
    Row("anonymize_key", None, [], []),
    Row("api_key", None, [], []),
    Row("api_keys", {}, [], ['["not", "an", "object"]', '{"bad alias!": "k"}', '{"a": ""}']),
    Row("api_base", "https://aicostmanager.com", [("https://x.test/", "https://x.test")], []),
    Row("api_url", "/api/v1", [("/api/v2/", "/api/v2")], []),
    Row("batch_size", 500, [("1", 1), (str(MAX_RECORDS_PER_REQUEST), MAX_RECORDS_PER_REQUEST)],
        ["0", str(MAX_RECORDS_PER_REQUEST + 1)]),
    Row("flush_interval_s", 1.0, [("0.05", 0.05)], ["0"]),
    Row("http_timeout_s", 30.0, [("5", 5.0)], ["0", "-3"]),
    Row("delivery_concurrency", 4, [("1", 1), ("64", 64)], ["0", "65"]),
    Row("max_retries", 25, [("0", 0), ("1000", 1000)], ["-1", "1001"]),
    Row("retry_base_s", 1.0, [("0.5", 0.5)], ["0"]),
    Row("retry_max_s", 300.0, [("60", 60.0)], ["0"]),
    Row("auth_retry_interval_s", 60.0, [("5", 5.0)], ["0"]),
    Row("redelivery_timeout_s", 60.0, [("2", 2.0)], ["1.9", "0"]),
    Row("limits_enabled", False, [("true", True), ("1", True), ("off", False)], ["sometimes"]),
    Row("limits_refresh_ms", 500, [("10", 10), ("3600000", 3600000)], ["9", "3600001", "0.5"]),
    Row("limits_poll_interval_s", 30.0, [("0.5", 0.5)], ["0", "-1"]),
    Row("limits_public_key", None, [(PUBLIC_PEM, PUBLIC_PEM)], ["-----BEGIN PUBLIC KEY-----"]),
    Row("events_enabled", True, [("false", False)], ["sometimes"]),
    Row("events_show_payloads", False, [("true", True)], ["sometimes"]),
    Row("metrics_port", None, [("9100", 9100), ("1", 1), ("65535", 65535)], ["0", "65536"]),
    Row("health_window_s", 120.0, [("1", 1.0), ("3600", 3600.0)], ["0.5", "3601", "x"]),
    Row("server_api_key", None, [], []),
    Row(
        "server_db",
        "aicm-local.sqlite3",
        [("/var/lib/ledger.sqlite3", "/var/lib/ledger.sqlite3"),
         ("sqlite:///x.db", "sqlite:///x.db"),
         ("postgresql://u:p@db:5432/ledger", "postgresql://u:p@db:5432/ledger")],
        ["mysql://u:p@db/ledger", "postgresql://u:pa/ss@db:5432/ledger"],
    ),
    Row("server_keys_dir", None, [("/var/lib/aicm/keys", Path("/var/lib/aicm/keys"))], []),
    Row("server_url", "http://127.0.0.1:8000", [("http://ledger:9000/", "http://ledger:9000")], []),
    Row("monthly_budget_usd", None, [("250.5", 250.5), ("0", 0.0)], ["-1"]),
    Row("customer_budgets_usd", {}, [('{"acme": 250}', {"acme": 250.0})], ['{"acme": -1}']),
]  # fmt: skip


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No AICM_* variable of the machine or of tests/conftest.py leaks in."""
    import os

    for name in list(os.environ):
        if name.startswith("AICM_"):
            monkeypatch.delenv(name)
    yield


def variable(field: str) -> str:
    return f"AICM_{field.upper()}"


def test_the_table_names_every_setting_and_docs_list_each() -> None:
    assert sorted([row.field for row in TABLE] + ["spool_dir"]) == sorted(Settings.model_fields)
    documented = CONFIGURATION_MD.read_text()
    for field in Settings.model_fields:
        assert f"| `{variable(field)}` |" in documented, f"{variable(field)} not in the docs table"


@pytest.mark.parametrize("row", TABLE, ids=[row.field for row in TABLE])
def test_each_setting_has_its_documented_default(row: Row) -> None:
    assert getattr(Settings(), row.field) == row.default


def test_the_spool_lives_in_the_users_cache_directory_by_default() -> None:
    assert Settings().spool_dir.parts[-2:] == ("aicm-tasks", "spool")


@pytest.mark.parametrize(
    ("field", "text", "expected"),
    [(row.field, text, expected) for row in TABLE for text, expected in row.good],
)
def test_each_setting_is_read_from_its_variable_with_its_type(
    monkeypatch: pytest.MonkeyPatch, field: str, text: str, expected: Any
) -> None:
    monkeypatch.setenv(variable(field), text)
    value = getattr(Settings(), field)
    assert value == expected
    assert type(value) is type(expected)


@pytest.mark.parametrize(
    ("field", "text"), [(row.field, text) for row in TABLE for text in row.bad]
)
def test_a_value_out_of_range_or_of_the_wrong_type_fails_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, field: str, text: str
) -> None:
    monkeypatch.setenv(variable(field), text)
    with pytest.raises(ValidationError) as failure:
        Settings()
    assert field in str(failure.value)


@pytest.mark.parametrize(
    ("field", "text"), [(row.field, text) for row in TABLE for text in row.bad]
)
def test_from_env_refuses_a_bad_value_in_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, field: str, text: str
) -> None:
    monkeypatch.setenv(variable(field), text)
    with pytest.raises(SettingsError) as failure:
        Settings.from_env()
    message = str(failure.value)
    assert message.startswith(variable(field))
    assert "\n" not in message
    assert "pydantic" not in message and "validation error" not in message
    assert failure.value.variables == (variable(field),)
    # One line, and no chain to print pydantic's dump under it either.
    assert failure.value.__cause__ is None and failure.value.__suppress_context__


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("AICM_BATCH_SIZE", "5000", "AICM_BATCH_SIZE must be at most 1000"),
        ("AICM_BATCH_SIZE", "0", "AICM_BATCH_SIZE must be at least 1"),
        ("AICM_BATCH_SIZE", "many", "AICM_BATCH_SIZE must be a whole number"),
        ("AICM_FLUSH_INTERVAL_S", "0", "AICM_FLUSH_INTERVAL_S must be more than 0"),
        ("AICM_PUBLISH_TIMEOUT_S", "soon", "AICM_PUBLISH_TIMEOUT_S must be a number"),
        ("AICM_REDELIVERY_TIMEOUT_S", "1.9", "AICM_REDELIVERY_TIMEOUT_S must be at least 2"),
        ("AICM_EVENTS_ENABLED", "maybe", "AICM_EVENTS_ENABLED must be true or false"),
        ("AICM_API_KEYS", "{not json", "AICM_API_KEYS must be valid JSON"),
        ("AICM_API_KEYS", "[1, 2]", "AICM_API_KEYS must be a JSON object"),
        ("AICM_CUSTOMER_BUDGETS_USD", '{"acme": -1}',
         "AICM_CUSTOMER_BUDGETS_USD (key 'acme') must be at least 0"),
        ("AICM_BROKER_URL", "http://h:1", "AICM_BROKER_URL: http://h:1 is not a usable broker URL"),
    ],
)  # fmt: skip
def test_the_one_line_says_what_the_variable_must_be(
    monkeypatch: pytest.MonkeyPatch, name: str, text: str, message: str
) -> None:
    monkeypatch.setenv(name, text)
    with pytest.raises(SettingsError) as failure:
        Settings.from_env()
    assert str(failure.value).startswith(message)


def test_two_bad_variables_are_named_on_the_same_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AICM_BATCH_SIZE", "5000")
    monkeypatch.setenv("AICM_MAX_RETRIES", "-1")
    with pytest.raises(SettingsError) as failure:
        Settings.from_env()
    assert str(failure.value) == (
        "AICM_BATCH_SIZE must be at most 1000; AICM_MAX_RETRIES must be at least 0"
    )
    assert failure.value.variables == ("AICM_BATCH_SIZE", "AICM_MAX_RETRIES")


def test_the_settings_error_is_a_configuration_and_value_error() -> None:
    assert issubclass(SettingsError, ConfigurationError)
    assert issubclass(SettingsError, ValueError)


def test_a_bad_key_alias_is_refused_without_echoing_the_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AICM_API_KEYS", '{"bad alias!": "sk-team-secret-42"}')
    with pytest.raises(SettingsError) as failure:
        Settings.from_env()
    assert "sk-team-secret-42" not in str(failure.value)
    assert str(failure.value).startswith("AICM_API_KEYS: 'bad alias!' is not an alias name")


def test_a_cluster_needs_its_node_urls_and_celery_keeps_the_broker_url(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AICM_REDIS_CLUSTER", "true")
    with pytest.raises(ValidationError, match="AICM_REDIS_CLUSTER=true needs AICM_SHARD_URLS"):
        Settings()
    monkeypatch.setenv("AICM_SHARD_URLS", "redis://n1:7000,redis://n2:7001")
    settings = Settings()
    assert settings.redis_cluster is True
    assert settings.broker_url == "redis://localhost:6379/0"


def test_the_replica_wait_must_fit_in_one_publish_attempt(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AICM_REPLICA_ACKS", "1")
    monkeypatch.setenv("AICM_REPLICA_ACK_TIMEOUT_S", "0.5")
    with pytest.raises(ValidationError, match="must be under half of AICM_PUBLISH_TIMEOUT_S=1"):
        Settings()
    monkeypatch.setenv("AICM_PUBLISH_TIMEOUT_S", "2")
    assert Settings().replica_acks == 1


def test_fewer_shards_than_primaries_is_refused_in_one_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AICM_SHARD_URLS", "redis://a:6379/0,redis://b:6379/0,redis://c:6379/0")
    monkeypatch.setenv("AICM_SHARDS", "2")
    with pytest.raises(ValidationError, match="AICM_SHARDS=2 leaves some of the 3"):
        Settings()
    monkeypatch.setenv("AICM_SHARDS", "6")
    assert Settings().shards == 6


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"AICM_SHARDS": "0"}, "AICM_SHARDS must be at least 1"),
        ({"AICM_REPLICA_ACKS": "9"}, "AICM_REPLICA_ACKS must be at most 5"),
        ({"AICM_SHARD_URLS": "http://a:1"}, "AICM_SHARD_URLS: http://a:1 is not a usable shard URL"),
        ({"AICM_REDIS_CLUSTER": "true"}, "AICM_REDIS_CLUSTER=true needs AICM_SHARD_URLS"),
        ({"AICM_SHARD_URLS": "redis://a:1,redis://b:1", "AICM_SHARDS": "1"},
         "AICM_SHARDS=1 leaves some of the 2 AICM_SHARD_URLS unused"),
    ],
)  # fmt: skip
def test_a_bad_shard_setting_is_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], message: str
) -> None:
    for name, text in env.items():
        monkeypatch.setenv(name, text)
    with pytest.raises(SettingsError) as failure:
        Settings.from_env()
    assert str(failure.value).startswith(message)
    assert "\n" not in str(failure.value)


def test_an_empty_variable_counts_as_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AICM_METRICS_PORT", "")
    monkeypatch.setenv("AICM_BATCH_SIZE", "")
    settings = Settings()
    assert settings.metrics_port is None
    assert settings.batch_size == 500


def test_the_batch_size_cap_is_the_contracts_limit() -> None:
    limits = [getattr(m, "le", None) for m in Settings.model_fields["batch_size"].metadata]
    assert MAX_RECORDS_PER_REQUEST in limits


def test_the_track_url_joins_base_and_path_without_double_slashes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AICM_API_BASE", "https://track.example/")
    monkeypatch.setenv("AICM_API_URL", "/api/v1/")
    assert Settings().track_url == "https://track.example/api/v1/track"


# -- secrets ---------------------------------------------------------------------------------


def test_keys_are_secret_strings_never_shown_in_repr_or_errors(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AICM_API_KEY", "sk-default-abcdef")
    monkeypatch.setenv("AICM_API_KEYS", '{"team-a": "sk-team-a-123456"}')
    monkeypatch.setenv("AICM_SERVER_API_KEY", "sk-server-987654")
    settings = Settings()
    assert isinstance(settings.api_key, SecretStr)
    assert isinstance(settings.server_api_key, SecretStr)
    assert isinstance(settings.api_keys["team-a"], SecretStr)
    assert settings.api_key.get_secret_value() == "sk-default-abcdef"
    assert settings.api_keys["team-a"].get_secret_value() == "sk-team-a-123456"
    shown = repr(settings) + str(settings) + repr(settings.model_dump())
    for secret in ("sk-default-abcdef", "sk-team-a-123456", "sk-server-987654"):
        assert secret not in shown


def test_an_error_in_another_variable_does_not_echo_a_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AICM_API_KEYS", '{"bad alias!": "sk-team-secret-42"}')
    with pytest.raises(ValidationError) as failure:
        Settings()
    assert "sk-team-secret-42" not in str(failure.value)
    assert "'bad alias!' is not an alias name" in str(failure.value)


@pytest.mark.parametrize(
    "url",
    [
        "redis://:s3cr/et@redis:6379/0",  # '/' ends the host part early
        "redis://:s3cr#et@redis:6379/0",  # '#' starts a fragment
        "redis://user:s3cr?et@redis:6379/0",  # '?' starts a query
    ],
)
def test_a_broker_url_that_does_not_parse_is_refused_with_its_password_hidden(
    monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    monkeypatch.setenv("AICM_BROKER_URL", url)
    with pytest.raises(ValidationError) as failure:
        Settings()
    message = str(failure.value)
    assert "is not a usable broker URL" in message
    assert "s3cr" not in message
    assert "Percent-encode" in message


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("redis://localhost:6379/0", None),
        ("rediss://:p%2Fw@host:6380/1", None),
        ("unix:///tmp/redis.sock", None),
        ("unix://", "it names no socket path"),
        ("http://localhost", "the scheme must be one of redis://, rediss://, unix://"),
        ("redis://:pw@host:notaport/0", "what follows the host is not a port number"),
        ("redis:///0", "it names no host"),
        ("redis://host:6379/0#frag", "it holds a '#'"),
    ],
)
def test_url_problem_names_what_is_wrong(url: str, problem: str | None) -> None:
    assert url_problem(url, ("redis", "rediss", "unix")) == problem


# -- unknown variables ---------------------------------------------------------------------


def test_an_unknown_variable_is_warned_about_with_the_closest_name(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("AICM_BACTH_SIZE", "100")
    monkeypatch.setenv("AICM_BATCH_SIZE", "100")
    with caplog.at_level(logging.WARNING, logger="aicm_tasks.settings"):
        settings = Settings.from_env()
    assert settings.batch_size == 100
    assert [r.getMessage() for r in caplog.records] == [
        "unknown setting AICM_BACTH_SIZE is ignored; did you mean AICM_BATCH_SIZE?"
    ]


def test_the_official_sdks_variables_and_other_prefixes_are_not_warned_about(
    caplog: pytest.LogCaptureFixture,
) -> None:
    environ = {name: "1" for name in SDK_VARIABLES}
    environ |= {"AICM_QUEUE": "q", "CELERY_BROKER_URL": "redis://", "AICMX": "1"}
    with caplog.at_level(logging.WARNING, logger="aicm_tasks.settings"):
        assert warn_unknown_variables(environ) == []
    assert caplog.records == []


def test_the_test_suites_variables_are_not_warned_about(
    caplog: pytest.LogCaptureFixture,
) -> None:
    environ = {"AICM_TEST_REDIS_URL": "redis://127.0.0.1:6379/9", "AICM_TEST_ANYTHING": "1"}
    with caplog.at_level(logging.WARNING, logger="aicm_tasks.settings"):
        assert warn_unknown_variables(environ) == []
    assert caplog.records == []


def test_an_unknown_variable_is_warned_about_once_per_process(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A name no other test uses: the "already warned" record lasts the process.
    monkeypatch.setenv("AICM_QQQQQQQQQQQQQQQQ", "1")
    with caplog.at_level(logging.WARNING, logger="aicm_tasks.settings"):
        for _ in range(3):
            Settings.from_env()
    assert [r.getMessage() for r in caplog.records] == [
        "unknown setting AICM_QQQQQQQQQQQQQQQQ is ignored"
    ]


def test_an_unknown_variable_far_from_any_name_gets_no_hint(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="aicm_tasks.settings"):
        assert warn_unknown_variables({"AICM_ZZZZZZZZZZZZZZ": "1"}) == ["AICM_ZZZZZZZZZZZZZZ"]
    assert caplog.records[0].getMessage() == "unknown setting AICM_ZZZZZZZZZZZZZZ is ignored"


def test_settings_are_frozen() -> None:
    with pytest.raises(ValidationError):
        Settings().batch_size = 10


@pytest.mark.parametrize(
    ("text", "expected"),
    [("email", ("email",)), (" email, prompt ,", ("email", "prompt")), ('["a", "b"]', ("a", "b"))],
)
def test_anonymized_fields_are_read_as_a_comma_list_or_json(
    monkeypatch: pytest.MonkeyPatch, text: str, expected: tuple[str, ...]
) -> None:
    monkeypatch.setenv("AICM_ANONYMIZE_FIELDS", text)
    monkeypatch.setenv("AICM_ANONYMIZE_KEY", "k" * 32)
    settings = Settings()
    assert settings.anonymize_fields == expected
    assert "k" * 32 not in repr(settings)


def test_anonymized_fields_without_the_key_are_refused_at_load(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AICM_ANONYMIZE_FIELDS", "email")
    with pytest.raises(ValidationError, match="AICM_ANONYMIZE_FIELDS needs AICM_ANONYMIZE_KEY"):
        Settings()


@pytest.mark.parametrize("key", ["", "k", "hunter2", "x" * 31])
def test_an_anonymize_key_anyone_could_guess_is_refused_at_load(
    monkeypatch: pytest.MonkeyPatch, key: str
) -> None:
    """The keyed hash hides a value only while the key cannot be guessed: with
    ``hunter2`` (or an empty key, accepted too), anyone can hash candidate e-mail
    addresses under likely keys and find a user's digest. At least 32 characters,
    what the documented ``secrets.token_hex(16)`` gives; the key is never echoed."""
    monkeypatch.setenv("AICM_ANONYMIZE_FIELDS", "email")
    monkeypatch.setenv("AICM_ANONYMIZE_KEY", key)
    with pytest.raises(ValidationError, match="AICM_ANONYMIZE_KEY") as failure:
        Settings()
    assert len(key) < 6 or key not in str(failure.value)
    monkeypatch.setenv("AICM_ANONYMIZE_KEY", "k" * 32)
    assert Settings().anonymize_fields == ("email",)


def test_a_rule_across_variables_is_one_line_too(monkeypatch: pytest.MonkeyPatch) -> None:
    from aicm_tasks.errors import SettingsError

    monkeypatch.setenv("AICM_ANONYMIZE_FIELDS", "email")
    with pytest.raises(SettingsError) as failure:
        Settings.from_env()
    assert str(failure.value).startswith("AICM_ANONYMIZE_FIELDS needs AICM_ANONYMIZE_KEY")
    assert "\n" not in str(failure.value)


@pytest.mark.parametrize(
    "pem",
    [
        "not a key",
        # The usual way a PEM goes wrong in an environment variable: its newlines
        # written as the two characters backslash-n.
        "-----BEGIN PUBLIC KEY-----\\nMIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA\\n-----END PUBLIC KEY-----",
    ],
)
def test_a_pinned_limits_key_that_is_not_an_rsa_public_key_is_refused_at_load(
    monkeypatch: pytest.MonkeyPatch, pem: str
) -> None:
    """Pinned, it is the only key tokens verify with: one that cannot be read made
    every genuine token "not verify", so no limit was ever enforced, with a warning
    per answer that blamed the token."""
    monkeypatch.setenv("AICM_LIMITS_PUBLIC_KEY", pem)
    with pytest.raises(ValidationError, match="not an RSA public key"):
        Settings()


def test_a_pinned_limits_key_that_is_an_rsa_public_key_loads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AICM_LIMITS_PUBLIC_KEY", PUBLIC_PEM)
    assert Settings().limits_public_key == PUBLIC_PEM


def test_an_amqp_broker_url_puts_records_on_rabbitmq_unless_shard_urls_keep_them_on_redis():
    assert Settings(broker_url="amqps://u:p@rabbit/billing").records_on_rabbitmq
    assert not Settings(
        broker_url="amqp://u:p@rabbit/", shard_urls=("redis://a:7000",)
    ).records_on_rabbitmq
    assert not Settings().records_on_rabbitmq


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        ({"shards": 3}, "AICM_SHARDS=3 needs Redis"),
        ({"replica_acks": 1}, "publisher confirm"),
        ({"limits_enabled": True}, "AICM_LIMITS_ENABLED needs Redis"),
    ],
)
def test_redis_only_settings_are_refused_on_rabbitmq(extra, says):
    with pytest.raises(ValidationError, match=says):
        Settings(broker_url="amqp://u:p@rabbit/", **extra)
