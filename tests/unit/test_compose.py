"""docker-compose.yml stays runnable: every stage present, one image, one Kafka address.

The file is checked as data (no Docker needed); when the ``docker compose`` plugin is
installed, Compose itself validates it too.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from streams.demo_models import CANDIDATE_SPECS

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
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
    return command.split() if isinstance(command, str) else [str(c) for c in command]


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


def _advertised(kafka: dict[str, Any], listener: str) -> str:
    for entry in _env(kafka)["KAFKA_ADVERTISED_LISTENERS"].split(","):
        name, _, address = entry.partition("://")
        if name == listener:
            return address
    raise AssertionError(f"no advertised {listener} listener")


def test_stages_build_one_image_and_use_the_kafka_service(
    services: dict[str, dict[str, Any]],
) -> None:
    kafka_address = _advertised(services["kafka"], "PLAINTEXT")
    assert kafka_address.split(":")[0] == "kafka"  # the service name, resolvable in-network
    for name in STAGES:
        service = services[name]
        build = service["build"]
        assert (ROOT / build["context"]).resolve() == ROOT, name
        assert build["dockerfile"] == "deploy/Dockerfile", name
        assert _env(service)["KAFKA_BOOTSTRAP_SERVERS"] == kafka_address, name
        assert service["depends_on"]["kafka"]["condition"] == "service_healthy", name
        assert _command(service), name
    for name in STAGES[1:]:
        condition = services[name]["depends_on"]["topics"]["condition"]
        assert condition == "service_completed_successfully", name


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


def test_dockerfile_installs_the_cli() -> None:
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    assert "FROM python:3.11-slim" in dockerfile
    assert 'pip install ".[all]"' in dockerfile
    assert 'ENTRYPOINT ["understudy"]' in dockerfile
    # schemas/ is found next to the package only in a checkout or an editable install.
    assert "UNDERSTUDY_SCHEMA_DIR=/app/schemas" in dockerfile
    for line in dockerfile.splitlines():
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), source


def _compose_plugin() -> bool:
    docker = shutil.which("docker")
    if docker is None:
        return False
    try:
        result = subprocess.run(
            [docker, "compose", "version"], capture_output=True, timeout=30, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return result.returncode == 0


def test_compose_validates_the_file_when_installed() -> None:
    """`docker compose config -q` where Compose exists; the checks above hold everywhere."""
    if not _compose_plugin():
        return  # no Compose here: the structural tests above are the whole check
    result = subprocess.run(
        ["docker", "compose", "-f", str(COMPOSE), "config", "-q"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
