"""Apache Kafka in Docker through testcontainers, when a Docker engine answers."""

from __future__ import annotations

import gc
import logging
import os
import time
import warnings
from contextlib import suppress
from pathlib import Path

from streams.broker.files import tail_text
from streams.broker.node import SINGLE_NODE_SETTINGS, answers, free_port, new_cluster_id
from streams.errors import BrokerError

log = logging.getLogger(__name__)

KAFKA_IMAGE = "apache/kafka:4.4.0"
"""Official Apache Kafka image used when a Docker engine is available."""

_CONTROLLER_PORT = 9093


def docker_available() -> bool:
    """True only if a Docker engine answers a ping, within a few seconds; never raises.

    Used to choose between testcontainers and the embedded broker, so any failure (no
    ``docker`` package, no socket, no permission, a hung engine) simply means "no".
    """
    host = os.environ.get("DOCKER_HOST", "")
    if not host and not Path("/var/run/docker.sock").exists():
        return False  # docker-py's default socket is absent: nothing to ask
    # docker-py leaks the socket of a failed connect; collect it here, silently, rather
    # than let its ResourceWarning surface later in whatever code runs next.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        try:
            import docker

            client = docker.from_env(timeout=3)
            try:
                return bool(client.ping())
            finally:
                client.close()
        except Exception:
            return False
        finally:
            gc.collect()


def container_env(port: int, host: str, cluster_id: str) -> dict[str, str]:
    """Settings for the official ``apache/kafka`` image, which maps KAFKA_X_Y to x.y."""
    settings = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@localhost:{_CONTROLLER_PORT}",
        "listeners": f"PLAINTEXT://0.0.0.0:{port},CONTROLLER://0.0.0.0:{_CONTROLLER_PORT}",
        "advertised.listeners": f"PLAINTEXT://{host}:{port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        **SINGLE_NODE_SETTINGS,
    }
    env = {"KAFKA_" + key.upper().replace(".", "_"): value for key, value in settings.items()}
    env["CLUSTER_ID"] = cluster_id
    return env


def start_testcontainer(image: str = KAFKA_IMAGE, timeout: float = 120.0) -> tuple[str, object]:
    """Start the official Apache Kafka image (KRaft) with testcontainers; return (bootstrap, c).

    testcontainers-python's ``KafkaContainer`` only drives Confluent ``cp-kafka`` images (its
    ``with_kraft()`` rejects tags below 7.0 and its start script calls Confluent paths), so
    the official image is run as a generic container. The advertised listener must carry the
    port the client sees, which a random mapping only reveals after start; so a free host
    port is chosen first and the broker listens on that same port inside the container.
    The caller stops the container (``container.stop()``); Ryuk removes it if we crash.
    """
    try:
        from testcontainers.core.container import DockerContainer
    except ImportError as exc:
        raise BrokerError(
            "testcontainers is not installed (pip install 'understudy[dev]')"
        ) from exc
    port = free_port()
    try:
        container = DockerContainer(image)
        client = container.get_docker_client()
        host = client.host() if hasattr(client, "host") else "localhost"
    except Exception as exc:
        raise BrokerError(f"cannot reach a Docker engine: {exc}") from exc
    for key, value in container_env(port, host, new_cluster_id()).items():
        container.with_env(key, value)
    container.with_bind_ports(port, port)
    bootstrap = f"{host}:{port}"
    deadline = time.monotonic() + timeout
    try:
        container.start()
        while not answers(bootstrap, 2.0):
            if time.monotonic() >= deadline:
                stdout, stderr = container.get_logs()
                logs = (stdout + stderr).decode(errors="replace")
                raise BrokerError(
                    f"Kafka container {image} did not answer at {bootstrap} within "
                    f"{timeout:.0f}s:\n{tail_text(logs, 20)}"
                )
            time.sleep(0.5)
    except BaseException as exc:
        with suppress(Exception):
            container.stop()
        if isinstance(exc, Exception) and not isinstance(exc, BrokerError):
            raise BrokerError(f"starting Kafka container {image} failed: {exc}") from exc
        raise
    log.info("Kafka container %s ready at %s", image, bootstrap)
    return bootstrap, container
