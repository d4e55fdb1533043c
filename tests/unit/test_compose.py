"""docker-compose.yml stays runnable: every stage present, one image, one Kafka address.

The file is checked as data (no Docker needed): commands against the real CLI parser, the
Kafka image against the version the project runs, environment variables against the
configuration, the build context against ``.dockerignore``. Where Compose is installed
(the ``docker compose`` plugin, or the standalone ``docker-compose`` of Compose v1),
Compose itself validates the file too; neither needs a running Docker engine for that.
"""

from __future__ import annotations

import argparse
import re
import shlex
import shutil
import subprocess
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
import yaml

from streams import broker
from streams.cli import build_parser
from streams.config import Config
from streams.demo_models import CANDIDATE_SPECS

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
STAGES = ("topics", "service", "worker", "joiner", "evaluator")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    services = compose["services"]
    assert isinstance(services, dict)
    return services


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # the "KEY=value" list form
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def _command(service: dict[str, Any]) -> list[str]:
    command = service.get("command") or []
    return shlex.split(command) if isinstance(command, str) else [str(c) for c in command]


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("the CLI has no subcommands")


def _parses(argv: list[str]) -> bool:
    try:
        build_parser().parse_args(argv)
    except SystemExit:
        return False
    return True


def test_every_stage_is_a_service(services: dict[str, dict[str, Any]]) -> None:
    assert {"kafka", *STAGES} <= set(services)


def test_kafka_is_the_official_image_in_kraft_mode(services: dict[str, dict[str, Any]]) -> None:
    kafka = services["kafka"]
    assert str(kafka["image"]).startswith("apache/kafka:")
    env = _env(kafka)
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert env["KAFKA_CONTROLLER_LISTENER_NAMES"] == "CONTROLLER"
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"].startswith(f"{env['KAFKA_NODE_ID']}@")
    # One node: internal topics must fit on it, or groups and transactions hang.
    for key in (
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR",
    ):
        assert env[key] == "1", key
    assert env["KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS"] == "0"
    assert "healthcheck" in kafka


def test_kafka_runs_the_version_the_project_runs(services: dict[str, dict[str, Any]]) -> None:
    """The stack, testcontainers and the embedded broker all run the same Kafka."""
    image = str(services["kafka"]["image"])
    assert image.rpartition(":")[2] == broker.KAFKA_VERSION
    assert image == f"apache/kafka:{broker.KAFKA_VERSION}"
    assert image == broker.KAFKA_IMAGE  # what testcontainers starts


def _advertised(kafka: dict[str, Any], listener: str) -> str:
    for entry in _env(kafka)["KAFKA_ADVERTISED_LISTENERS"].split(","):
        name, _, address = entry.partition("://")
        if name == listener:
            return address
    raise AssertionError(f"no advertised {listener} listener")


def test_stages_use_the_kafka_service(services: dict[str, dict[str, Any]]) -> None:
    kafka_address = _advertised(services["kafka"], "PLAINTEXT")
    assert kafka_address.split(":")[0] == "kafka"  # the service name, resolvable in-network
    for name in STAGES:
        service = services[name]
        assert _env(service)["KAFKA_BOOTSTRAP_SERVERS"] == kafka_address, name
        assert service["depends_on"]["kafka"]["condition"] == "service_healthy", name
    for name in STAGES[1:]:
        condition = services[name]["depends_on"]["topics"]["condition"]
        assert condition == "service_completed_successfully", name


def test_stages_share_one_image_built_once(services: dict[str, dict[str, Any]]) -> None:
    """Five services, one image: building it per service sent the context five times."""
    images = {services[name].get("image") for name in STAGES}
    assert len(images) == 1, images
    (image,) = images
    assert image and not str(image).startswith("apache/"), image
    builders = [name for name in STAGES if "build" in services[name]]
    # The one that builds is the one every other stage waits for, so the image exists
    # before they start (Compose v1 ensures images in dependency order).
    assert builders == ["topics"], builders
    build = services["topics"]["build"]
    assert (ROOT / build["context"]).resolve() == ROOT
    assert (ROOT / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE
    for name in STAGES:
        # A locally built image: nothing to pull from a registry.
        assert services[name].get("pull_policy") == "never", name


def test_every_command_is_a_real_subcommand(services: dict[str, dict[str, Any]]) -> None:
    subcommands = _subcommands()
    for name in STAGES:
        command = _command(services[name])
        assert command, name
        assert command[0] in subcommands, (name, command[0], sorted(subcommands))
        assert _parses(command), (name, command)


def test_stage_commands(services: dict[str, dict[str, Any]]) -> None:
    assert _command(services["topics"])[:2] == ["topics", "create"]
    assert _command(services["service"])[0] == "demo-service"
    worker = _command(services["worker"])
    assert worker[0] == "worker"
    candidates = [worker[i + 1] for i, arg in enumerate(worker) if arg == "--candidate"]
    # The stack shows the same models, under the same ids, as `understudy demo`.
    assert tuple(candidates) == CANDIDATE_SPECS
    assert _command(services["joiner"])[0] == "joiner"
    assert _command(services["evaluator"])[0] == "evaluator"


def test_commands_in_comments_exist() -> None:
    """A `understudy ...` in the file's comments is a command that parses."""
    text = COMPOSE.read_text()
    shown = re.findall(r"`(?:[A-Z_]+=\S+ )*understudy ([^`]*)`", text)
    assert shown  # the header shows how to reach Kafka from the host
    for command in shown:
        assert _parses(shlex.split(command)), command


def test_header_names_both_compose_commands() -> None:
    """Compose v1 has only `docker-compose`; v2 is the `docker compose` plugin."""
    header = "".join(
        line for line in COMPOSE.read_text().splitlines(keepends=True) if line.startswith("#")
    )
    assert "docker compose up" in header
    assert "docker-compose up" in header


def _dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for line in DOCKERFILE.read_text().replace("\\\n", " ").splitlines():
        if line.startswith("ENV "):
            for item in shlex.split(line[len("ENV ") :]):
                key, _, value = item.partition("=")
                env[key] = value
    return env


def test_understudy_variables_are_ones_the_code_reads(
    services: dict[str, dict[str, Any]],
) -> None:
    """Every UNDERSTUDY_* the image or a service sets is a Config field or read by the code.

    ``Config.load`` ignores UNDERSTUDY_* names it does not know (other parts read some), so
    a stale or misspelt one would be silently dropped.
    """
    source = "\n".join(p.read_text() for p in (ROOT / "streams").rglob("*.py"))
    config_fields = {f.name for f in fields(Config)} - {"kafka"}
    settings = {"image": _dockerfile_env()}
    settings.update({name: _env(services[name]) for name in STAGES})
    for where, env in settings.items():
        for key in env:
            if not key.startswith("UNDERSTUDY_") or key.startswith("UNDERSTUDY_KAFKA_"):
                continue
            field = key[len("UNDERSTUDY_") :].lower()
            assert field in config_fields or f'"{key}"' in source, (where, key)
        if where != "image":
            Config.load(env={**settings["image"], **env})  # valid values, or ConfigError


def test_dockerfile_installs_the_cli() -> None:
    dockerfile = DOCKERFILE.read_text()
    assert "FROM python:3.11-slim" in dockerfile
    # A regular install of the copied sources, as the wheel installs: not editable.
    assert 'pip install ".[all]"' in dockerfile
    assert "pip install -e" not in dockerfile
    assert 'ENTRYPOINT ["understudy"]' in dockerfile
    # schemas/ is found next to the package only in a checkout or an editable install.
    assert _dockerfile_env()["UNDERSTUDY_SCHEMA_DIR"] == "/app/schemas"
    for source in _copy_sources():
        assert (ROOT / source).exists(), source


def _copy_sources() -> list[str]:
    sources: list[str] = []
    for line in DOCKERFILE.read_text().splitlines():
        if line.startswith("COPY ") and "--from" not in line:
            sources.extend(line.split()[1:-1])
    return sources


# -- .dockerignore -----------------------------------------------------------------------
# The rules of Docker's build context (moby/patternmatcher): patterns use Go filepath.Match
# syntax plus `**`, a path is excluded when it or a parent directory matches, the last
# matching pattern wins, and `!` re-includes.


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if pattern.startswith("**/", i):
            out += "(.*/)?"
            i += 3
            continue
        if pattern.startswith("**", i):
            out += ".*"
            i += 2
            continue
        out += {"*": "[^/]*", "?": "[^/]"}.get(ch, re.escape(ch))
        i += 1
    return re.compile(out + "$")


def _ignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    rules = []
    for raw in DOCKERIGNORE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        keep = line.startswith("!")
        pattern = line.lstrip("!").strip().strip("/")
        rules.append((keep, _pattern_regex(pattern)))
    return rules


def _excluded(path: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for keep, regex in rules:
        if any(regex.match(p) for p in prefixes):
            excluded = not keep
    return excluded


def test_dockerignore_keeps_the_context_small() -> None:
    """Not .venv, .git or caches (434 MB once): only what the Dockerfile copies."""
    rules = _ignore_rules()
    for path in (
        ".venv/bin/python",
        ".venv/lib/python3.11/site-packages/numpy/__init__.py",
        ".git/HEAD",
        ".git/objects/pack/pack-0.pack",
        ".pytest_cache/v/cache/lastfailed",
        ".mypy_cache/3.11/streams/cli.meta.json",
        "understudy.egg-info/PKG-INFO",
        "streams/__pycache__/cli.cpython-311.pyc",
        "streams/_speedups.cpython-311-x86_64-linux-gnu.so",  # this machine's build
        "tests/unit/test_compose.py",
        "bench/joiner.py",
    ):
        assert _excluded(path, rules), path


def test_dockerignore_keeps_what_the_dockerfile_copies() -> None:
    rules = _ignore_rules()
    sources = _copy_sources()
    assert {"pyproject.toml", "README.md", "streams", "schemas"} <= set(sources)
    for source in sources:
        root = ROOT / source
        files = [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file()]
        # built here, not sources: the image builds its own
        files = [p for p in files if "__pycache__" not in p.parts and p.suffix != ".so"]
        assert files, source
        for path in files:
            relative = path.relative_to(ROOT).as_posix()
            assert not _excluded(relative, rules), relative


# -- Compose itself ------------------------------------------------------------------------


def _works(argv: list[str]) -> bool:
    try:
        result = subprocess.run(argv, capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return False
    return result.returncode == 0


def _compose_cli(kind: str) -> list[str]:
    """The Compose command of ``kind``, or skip (with the reason) when it is not installed."""
    if kind == "v2":
        docker = shutil.which("docker")
        if docker is None or not _works([docker, "compose", "version"]):
            pytest.skip("the `docker compose` plugin (Compose v2) is not installed")
        return [docker, "compose"]
    standalone = shutil.which("docker-compose")
    if standalone is None or not _works([standalone, "version"]):
        pytest.skip("the standalone `docker-compose` (Compose v1) is not installed")
    return [standalone]


@pytest.mark.parametrize("kind", ["v2", "v1"])
def test_compose_validates_the_file(kind: str) -> None:
    """`config -q` checks the file without a Docker engine; skipped, never passed, without it."""
    cli = _compose_cli(kind)
    result = subprocess.run(
        [*cli, "-f", str(COMPOSE), "config", "-q"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr


def test_the_exporter_serves_the_stack_and_prometheus_scrapes_it(
    services: dict[str, dict[str, Any]],
) -> None:
    """The exporter runs the stages' image against the same Kafka; the optional Prometheus
    (profile ``monitoring``) scrapes it at the port it serves."""
    exporter = services["exporter"]
    assert exporter["image"] == services["joiner"]["image"]
    assert (
        _env(exporter)["KAFKA_BOOTSTRAP_SERVERS"]
        == _env(services["joiner"])["KAFKA_BOOTSTRAP_SERVERS"]
    )
    command = _command(exporter)
    assert _parses(command), command
    port = command[command.index("--port") + 1]
    assert f"{port}:{port}" in exporter["ports"]
    prometheus = services["prometheus"]
    assert prometheus["profiles"] == ["monitoring"]  # not started by a plain `up`
    mount = next(v for v in prometheus["volumes"] if v.endswith(":ro"))
    config = yaml.safe_load((ROOT / mount.split(":")[0]).read_text())
    targets = [
        t for job in config["scrape_configs"] for c in job["static_configs"] for t in c["targets"]
    ]
    assert targets == [f"exporter:{port}"]


def test_grafana_shows_the_dashboard_over_that_prometheus(
    services: dict[str, dict[str, Any]],
) -> None:
    """Optional Grafana (profile ``monitoring``): provisioned with the Prometheus service as
    its data source and the dashboard of deploy/grafana, both mounted read-only."""
    grafana = services["grafana"]
    assert grafana["profiles"] == ["monitoring"]
    mounts = dict(v.removesuffix(":ro").split(":") for v in grafana["volumes"])
    for host in mounts:
        assert (ROOT / host).is_dir(), host
    provisioning = ROOT / next(h for h, c in mounts.items() if c == "/etc/grafana/provisioning")
    source = yaml.safe_load((provisioning / "datasources/prometheus.yml").read_text())
    port = services["prometheus"]["ports"][0].split(":")[-1]
    assert source["datasources"][0]["url"] == f"http://prometheus:{port}"
    provider = yaml.safe_load((provisioning / "dashboards/understudy.yml").read_text())
    dashboards = provider["providers"][0]["options"]["path"]
    assert mounts and {c for c in mounts.values()} >= {dashboards}
    host = next(h for h, c in mounts.items() if c == dashboards)
    assert (ROOT / host / "understudy.json").is_file()
