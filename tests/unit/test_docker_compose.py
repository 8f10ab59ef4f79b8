"""The docker-compose stack: loopback only, no default secrets, the right image.

Read with PyYAML, so the properties hold on any machine; where a compose
binary is installed, it validates the file too, and refuses to render it
without each secret (the same interpolation stops ``docker compose up``).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "worker" / "Dockerfile"

#: The variables the stack cannot start without.
SECRETS = ("AICM_API_KEY", "REDIS_PASSWORD", "FLOWER_BASIC_AUTH")
#: The RabbitMQ profile's secret: required when its broker starts (its entrypoint
#: refuses to start without it), not when compose renders the file, since compose
#: v1 interpolates every profile and a Redis stack would need it too.
RABBITMQ_SECRET = "RABBITMQ_PASSWORD"
#: The RabbitMQ profile's services.
RABBITMQ_SERVICES = ("rabbitmq", "worker-rabbitmq", "flower-rabbitmq")
#: A variable whose name says it holds a secret.
SECRET_NAME = re.compile(r"KEY|PASSWORD|PASS|AUTH|SECRET|TOKEN")
#: ``${NAME}``, ``${NAME:-default}``, ``${NAME:?message}`` ...: name and operator.
INTERPOLATION = re.compile(r"\$\{(\w+)(?:(:?[-?+])[^}]*)?\}")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    return loaded


def strings(node: Any) -> Iterator[str]:
    """Every string in a YAML tree, keys included."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from strings(key)
            yield from strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from strings(item)


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        return dict(item.split("=", 1) for item in env)
    return {str(key): str(value) for key, value in env.items()}


def default_of(port_spec: str) -> str:
    """``127.0.0.1:${X:-6379}:6379`` as compose renders it with X unset."""
    return INTERPOLATION.sub(lambda m: m.group(0).split(":-", 1)[-1].rstrip("}"), port_spec)


def test_every_published_port_is_bound_to_loopback(compose: dict[str, Any]) -> None:
    published = {name: service.get("ports", []) for name, service in compose["services"].items()}
    assert published["redis"] and published["server"] and published["flower"]
    for name, service in compose["services"].items():
        # The host's network would put every port of the service on every interface.
        assert service.get("network_mode") != "host", name
    for name, ports in published.items():
        for spec in ports:
            # The long form ({target, published, host_ip}) must name the host too.
            host_ip = spec.get("host_ip") if isinstance(spec, dict) else spec.split(":")[0]
            assert host_ip == "127.0.0.1", f"{name} publishes {spec} beyond this host"


def test_redis_answers_the_host_on_the_readmes_broker_url(compose: dict[str, Any]) -> None:
    # README: a web app on the host publishes to redis://...@localhost:6379/0.
    assert default_of(compose["services"]["redis"]["ports"][0]) == "127.0.0.1:6379:6379"


def test_no_secret_has_a_default_value(compose: dict[str, Any]) -> None:
    text = COMPOSE_FILE.read_text(encoding="utf-8")
    assert "change-me" not in text
    for value in strings(compose):
        for name, operator in INTERPOLATION.findall(value):
            if name == RABBITMQ_SECRET:
                # Empty when unset (never a value), and the broker refuses to start.
                assert f"${{{RABBITMQ_SECRET}:-}}" in value, value
            elif SECRET_NAME.search(name):
                assert operator == ":?", f"${{{name}}} must be required (:?), not {operator!r}"


def test_the_rabbitmq_profile_runs_rabbitmq_with_its_management_api_and_a_password(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    for name in RABBITMQ_SERVICES:
        assert services[name]["profiles"] == ["rabbitmq"], name
    rabbitmq = services["rabbitmq"]
    assert rabbitmq["image"].endswith("-management")  # Flower's broker view needs the API
    assert environment(rabbitmq)["RABBITMQ_DEFAULT_PASS"] == f"${{{RABBITMQ_SECRET}:-}}"
    guard = " ".join(rabbitmq["entrypoint"])
    assert 'if [ -z "$$RABBITMQ_DEFAULT_PASS" ]' in guard and "exit 1" in guard
    assert {default_of(p).rsplit(":", 1)[-1] for p in rabbitmq["ports"]} == {"5672", "15672"}
    # The URL alone switches aicm-tasks: the worker and Flower get an amqp:// one.
    for name in ("worker-rabbitmq", "flower-rabbitmq"):
        url = environment(services[name])["AICM_BROKER_URL"]
        assert url == f"amqp://aicm:${{{RABBITMQ_SECRET}:-}}@rabbitmq:5672/%2F", name
    flower = environment(services["flower-rabbitmq"])
    assert set(flower) == {"AICM_BROKER_URL", "FLOWER_BROKER_API", "FLOWER_BASIC_AUTH"}
    assert flower["FLOWER_BROKER_API"].endswith("@rabbitmq:15672/api/")
    assert "redis" not in yaml.safe_dump(services["worker-rabbitmq"]).lower()


def test_each_secret_is_required_where_it_is_used(compose: dict[str, Any]) -> None:
    services = compose["services"]
    worker, flower, server = (environment(services[n]) for n in ("worker", "flower", "server"))
    assert worker["AICM_API_KEY"].startswith("${AICM_API_KEY:?")
    assert server["AICM_SERVER_API_KEY"].startswith("${AICM_API_KEY:?")
    for env in (worker, flower):
        assert "${REDIS_PASSWORD:?" in env["AICM_BROKER_URL"]
    assert flower["FLOWER_BASIC_AUTH"].startswith("${FLOWER_BASIC_AUTH:?")
    redis_command = services["redis"]["command"]
    password = redis_command[redis_command.index("--requirepass") + 1]
    assert password.startswith("${REDIS_PASSWORD:?")
    required = {
        name
        for value in strings(compose)
        for name, operator in INTERPOLATION.findall(value)
        if operator == ":?"
    }
    assert required == set(SECRETS)


def test_flower_gets_only_the_broker_url_and_its_login(compose: dict[str, Any]) -> None:
    flower = compose["services"]["flower"]
    assert "env_file" not in flower
    assert set(environment(flower)) == {"AICM_BROKER_URL", "FLOWER_BASIC_AUTH"}
    assert not any("AICM_API_KEY" in value for value in strings(flower))


#: The secrets each service needs, and so gets: no other.
NEEDED_SECRETS = {
    "redis": {"REDIS_PASSWORD"},
    "server": {"AICM_API_KEY"},
    "worker": {"REDIS_PASSWORD", "AICM_API_KEY"},
    "flower": {"REDIS_PASSWORD", "FLOWER_BASIC_AUTH"},
    "prometheus": set(),
    **{f"redis-node-{n}": {"REDIS_PASSWORD"} for n in range(1, 7)},
    "redis-cluster-create": {"REDIS_PASSWORD"},
    "worker-cluster": {"REDIS_PASSWORD", "AICM_API_KEY"},
    "rabbitmq": {RABBITMQ_SECRET},
    "worker-rabbitmq": {RABBITMQ_SECRET, "AICM_API_KEY"},
    "flower-rabbitmq": {RABBITMQ_SECRET, "FLOWER_BASIC_AUTH"},
}


def test_each_service_gets_only_the_secrets_it_needs(compose: dict[str, Any]) -> None:
    given = {
        name: {
            variable
            for value in strings(service)
            for variable, _ in INTERPOLATION.findall(value)
            if variable in (*SECRETS, RABBITMQ_SECRET)
        }
        for name, service in compose["services"].items()
    }
    assert given == NEEDED_SECRETS


def test_redis_keeps_records(compose: dict[str, Any]) -> None:
    command = compose["services"]["redis"]["command"]
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"
    assert command[command.index("--appendonly") + 1] == "yes"
    # The password is not on the healthcheck's command line.
    healthcheck = " ".join(compose["services"]["redis"]["healthcheck"]["test"])
    assert "REDIS_PASSWORD" not in healthcheck and " -a " not in healthcheck
    assert "REDISCLI_AUTH" in environment(compose["services"]["redis"])


#: The cluster profile's six nodes (3 primaries, a replica each).
CLUSTER_NODES = [f"redis-node-{n}" for n in range(1, 7)]


def node_arguments(service: dict[str, Any]) -> list[str]:
    """A cluster node's redis-server arguments (its command is ``sh -c "exec ..."``)."""
    assert service["command"][:2] == ["sh", "-c"]
    words = service["command"][2].split()
    assert words[:2] == ["exec", "redis-server"]
    return words[2:]


def test_the_cluster_profile_has_six_nodes_that_keep_records(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in CLUSTER_NODES:
        node = services[name]
        assert node["profiles"] == ["cluster"]
        args = node_arguments(node)

        def value(option: str, args: list[str] = args) -> str:
            return args[args.index(option) + 1]

        assert value("--cluster-enabled") == "yes"
        assert value("--maxmemory-policy") == "noeviction"
        assert value("--appendonly") == "yes"
        # Clients are sent to the node's service name, which every container of
        # the project resolves: its hostname, read by the shell ($$ in compose).
        assert node["hostname"] == name
        assert value("--cluster-announce-hostname") == '"$$HOSTNAME"'
        assert value("--cluster-preferred-endpoint-type") == "hostname"
        # The password comes from the environment, and replicas log in with it.
        assert value("--requirepass") == value("--masterauth") == '"$$REDISCLI_AUTH"'
        assert environment(node)["REDISCLI_AUTH"].startswith("${REDIS_PASSWORD:?")
        assert "ports" not in node
        assert node["volumes"] == [f"{name}:/data"]
        assert "REDIS_PASSWORD" not in " ".join(node["healthcheck"]["test"])


def test_the_cluster_is_created_once_with_a_replica_per_primary(compose: dict[str, Any]) -> None:
    create = compose["services"]["redis-cluster-create"]
    assert create["profiles"] == ["cluster"]
    script = create["command"][2]
    assert "redis-cli --cluster create" in script
    assert "--cluster-replicas 1 --cluster-yes" in script
    # A second `up` must not fail on nodes that already hold the cluster.
    assert "cluster_state:ok" in script
    assert set(create["depends_on"]) == set(CLUSTER_NODES)
    assert all(c == {"condition": "service_healthy"} for c in create["depends_on"].values())


def test_the_cluster_worker_keeps_records_on_the_cluster_and_celery_on_redis(
    compose: dict[str, Any],
) -> None:
    worker = compose["services"]["worker-cluster"]
    env = environment(worker)
    assert worker["profiles"] == ["cluster"]
    assert worker["command"] == compose["services"]["worker"]["command"]
    assert env["AICM_REDIS_CLUSTER"] == "true"
    urls = env["AICM_SHARD_URLS"].split(",")
    assert [url.rsplit("@", 1)[1] for url in urls] == [
        f"redis-node-{n}:6379/0" for n in range(1, 4)
    ]
    assert all(url.startswith("redis://:${REDIS_PASSWORD:?") for url in urls)
    assert env["AICM_BROKER_URL"].endswith("@redis:6379/0")
    assert worker["depends_on"]["redis-cluster-create"] == {
        "condition": "service_completed_successfully"
    }


def test_the_image_installs_the_extras_its_commands_need() -> None:
    dockerfile = DOCKERFILE.read_text(encoding="utf-8")
    match = re.search(r'pip install [^\n]*"\.\[([\w,-]+)\]"', dockerfile)
    assert match, "worker/Dockerfile installs the package with its extras"
    extras = set(match.group(1).split(","))
    # flower: the `flower` service; postgres: `serve --db postgresql://...`.
    assert {"flower", "postgres"} <= extras
    tomllib = pytest.importorskip("tomllib", reason="tomllib comes with Python 3.11")
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"][
        "optional-dependencies"
    ]
    assert extras <= set(declared)
    assert any(dep.startswith("psycopg") for dep in declared["postgres"])


def pattern_regex(pattern: str) -> str:
    """A .dockerignore pattern as a regex: ``*`` within a folder, ``**`` across them."""
    pieces = []
    for token in re.findall(r"\*\*/?|\*|\?|\[[^\]]*\]|[^*?\[]+", pattern.strip("/")):
        if token == "**/":
            pieces.append("(?:.*/)?")
        elif token == "**":
            pieces.append(".*")
        elif token == "*":
            pieces.append("[^/]*")
        elif token == "?":
            pieces.append("[^/]")
        elif token.startswith("["):
            pieces.append(token)
        else:
            pieces.append(re.escape(token))
    return "".join(pieces)


def dockerignore_excludes(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or a parent folder wins."""
    parts = path.split("/")
    candidates = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    excluded = False
    for pattern in patterns:
        regex = pattern_regex(pattern.removeprefix("!"))
        if any(re.fullmatch(regex, candidate) for candidate in candidates):
            excluded = not pattern.startswith("!")
    return excluded


@pytest.fixture(scope="module")
def dockerignore() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


@pytest.mark.parametrize(
    "path",
    [
        ".venv/bin/python",
        ".git/HEAD",
        ".env",
        ".mypy_cache/3.10/cache.db",
        ".pytest_cache/v/cache/lastfailed",
        ".hypothesis/examples/x",
        "aicm_tasks/__pycache__/app.cpython-311.pyc",
        "aicm_tasks.egg-info/PKG-INFO",
        "bench/results/latest.json",
        "tests/conftest.py",
        "ledger.sqlite3",
    ],
)
def test_dockerignore_keeps_out_what_the_image_does_not_need(
    path: str, dockerignore: list[str]
) -> None:
    assert dockerignore_excludes(path, dockerignore)


def test_dockerignore_lets_in_everything_the_dockerfile_copies(dockerignore: list[str]) -> None:
    sources = [
        source
        for line in DOCKERFILE.read_text(encoding="utf-8").splitlines()
        if line.startswith("COPY ")
        for source in line.split()[1:-1]
    ]
    assert "worker/entrypoint.sh" in sources and "aicm_tasks" in sources
    files = [
        str(path.relative_to(ROOT))
        for source in sources
        for path in ([ROOT / source] if (ROOT / source).is_file() else (ROOT / source).rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts
    ]
    assert "aicm_tasks/broker/lua/fetch.lua" in files  # package data, not only .py files
    kept_out = [f for f in files if dockerignore_excludes(f, dockerignore)]
    assert not kept_out


def test_the_readme_names_every_secret_the_stack_requires() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for name in SECRETS:
        assert name in readme
    assert "docker compose exec worker aicm-tasks status" in readme
    assert "docker compose exec worker aicm-tasks dlq" in readme


# -- with a compose binary -----------------------------------------------------


def compose_command() -> list[str] | None:
    """``docker compose`` (v2 plugin) or ``docker-compose``, whichever runs here."""
    if shutil.which("docker"):
        probe = subprocess.run(
            ["docker", "compose", "version"], capture_output=True, text=True, check=False
        )
        if probe.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def run_compose_config(
    tmp_path: Path, *profiles: str, **variables: str
) -> subprocess.CompletedProcess[str]:
    command = compose_command()
    if command is None:
        if os.environ.get("CI"):
            pytest.fail("CI needs a compose binary (.ci/run installs docker-compose)")
        pytest.skip(
            "no compose binary (`docker compose version` fails and no docker-compose on the "
            "PATH); the YAML checks above still ran"
        )
    # An empty env file and a clean environment: neither an .env beside the
    # compose file nor the developer's own AICM_API_KEY may fill a secret in.
    env_file = tmp_path / "empty.env"
    env_file.write_text("", encoding="utf-8")
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), **variables}
    return subprocess.run(
        [
            *command,
            *(arg for profile in profiles for arg in ("--profile", profile)),
            "--project-directory",
            str(ROOT),
            "--env-file",
            str(env_file),
            "-f",
            str(COMPOSE_FILE),
            "config",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


SECRET_VALUES = {
    "AICM_API_KEY": "key-for-the-test",
    "REDIS_PASSWORD": "0f1e2d3c4b5a",
    "FLOWER_BASIC_AUTH": "op:flower-pw",
}


def test_compose_renders_the_rabbitmq_profile_with_its_password(tmp_path: Path) -> None:
    result = run_compose_config(tmp_path, **SECRET_VALUES, RABBITMQ_PASSWORD="9a8b7c6d")
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    assert environment(services["worker-rabbitmq"])["AICM_BROKER_URL"] == (
        "amqp://aicm:9a8b7c6d@rabbitmq:5672/%2F"
    )
    assert environment(services["rabbitmq"])["RABBITMQ_DEFAULT_PASS"] == "9a8b7c6d"
    assert "9a8b7c6d" not in yaml.safe_dump(services["worker"])  # the Redis stack's
    for name in RABBITMQ_SERVICES:
        for spec in services[name].get("ports", []):
            host_ip = spec.get("host_ip") if isinstance(spec, dict) else spec.split(":")[0]
            assert host_ip == "127.0.0.1", f"{name}: {spec}"


def test_compose_validates_the_file_with_the_secrets_set(tmp_path: Path) -> None:
    result = run_compose_config(tmp_path, **SECRET_VALUES)
    assert result.returncode == 0, result.stderr
    rendered = yaml.safe_load(result.stdout)
    services = rendered["services"]
    assert environment(services["worker"])["AICM_BROKER_URL"] == (
        "redis://:0f1e2d3c4b5a@redis:6379/0"
    )
    assert environment(services["worker"])["AICM_API_KEY"] == "key-for-the-test"
    assert "key-for-the-test" not in yaml.safe_dump(services["flower"])
    for name, service in services.items():
        for spec in service.get("ports", []):
            host_ip = spec.get("host_ip") if isinstance(spec, dict) else spec.split(":")[0]
            assert host_ip == "127.0.0.1", f"{name}: {spec}"


def test_compose_validates_the_cluster_profile(tmp_path: Path) -> None:
    result = run_compose_config(tmp_path, "cluster", **SECRET_VALUES)
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    assert set(CLUSTER_NODES) | {"redis-cluster-create", "worker-cluster"} <= set(services)
    env = environment(services["worker-cluster"])
    assert env["AICM_SHARD_URLS"].split(",")[0] == "redis://:0f1e2d3c4b5a@redis-node-1:6379/0"
    assert env["AICM_BROKER_URL"] == "redis://:0f1e2d3c4b5a@redis:6379/0"
    for name, service in services.items():
        for spec in service.get("ports", []):
            host_ip = spec.get("host_ip") if isinstance(spec, dict) else spec.split(":")[0]
            assert host_ip == "127.0.0.1", f"{name}: {spec}"


@pytest.mark.parametrize("profiles", [(), ("cluster",)])
@pytest.mark.parametrize("missing", SECRETS)
def test_compose_refuses_to_start_without_each_secret(
    missing: str, profiles: tuple[str, ...], tmp_path: Path
) -> None:
    variables = {name: value for name, value in SECRET_VALUES.items() if name != missing}
    result = run_compose_config(tmp_path, *profiles, **variables)
    assert result.returncode != 0
    assert missing in result.stderr


def test_the_rabbitmq_guard_refuses_to_start_without_a_password(
    compose: dict[str, Any], tmp_path: Path
) -> None:
    # The entrypoint's script as compose hands it to the container ($$ is a literal $).
    script = compose["services"]["rabbitmq"]["entrypoint"][2].replace("$$", "$")
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin"}
    refused = subprocess.run(
        ["sh", "-c", script], env={**env, "RABBITMQ_DEFAULT_PASS": ""},
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert refused.returncode == 1 and "set RABBITMQ_PASSWORD" in refused.stderr
    # With one, it goes on to the image's own entrypoint (a stand-in here).
    stand_in = tmp_path / "docker-entrypoint.sh"
    stand_in.write_text('#!/bin/sh\necho started "$@"\n', encoding="utf-8")
    stand_in.chmod(0o755)
    started = subprocess.run(
        ["sh", "-c", script], env={**env, "RABBITMQ_DEFAULT_PASS": "9a8b"},
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert started.returncode == 0 and started.stdout.strip() == "started rabbitmq-server"
