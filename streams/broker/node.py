"""A one-node KRaft cluster, however it runs: its settings, its id, its ports, its probe.

Both ways to run a broker (the embedded JVM and the Docker container) build on these, so a
test sees the same single-node behaviour whichever one the machine allows.
"""

from __future__ import annotations

import base64
import logging
import socket
import uuid
from typing import Any

log = logging.getLogger(__name__)

SINGLE_NODE_SETTINGS: dict[str, str] = {
    # Internal topics default to 3 replicas (and min.isr 2): one node could never create
    # them, so consumer groups and transactions would hang. One replica is all we have.
    "offsets.topic.replication.factor": "1",
    "transaction.state.log.replication.factor": "1",
    "transaction.state.log.min.isr": "1",
    "share.coordinator.state.topic.replication.factor": "1",
    "share.coordinator.state.topic.min.isr": "1",
    # Tests and the demo start consumers and expect an assignment now, not in 3 s.
    "group.initial.rebalance.delay.ms": "0",
    # Topics are created by the topic admin code with the right partition counts; a typo'd
    # topic name must fail instead of silently creating a 1-partition topic.
    "auto.create.topics.enable": "false",
    "num.partitions": "1",
}
"""Broker settings every single-node cluster we start needs (embedded or container)."""


def new_cluster_id() -> str:
    """Return a random base64url Kafka cluster id (what ``kafka-storage random-uuid`` does)."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):  # an id like "-abc" reads as an option on a command line
            return text


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_ports(count: int, *, avoid: tuple[int, ...] = ()) -> list[int]:
    """``count`` distinct free ports, none of them in ``avoid``."""
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in ports and port not in avoid:
            ports.append(port)
    return ports


def port_free(port: int) -> bool:
    """True when ``port`` on 127.0.0.1 can be bound (a port in TIME_WAIT counts as free)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Java servers bind with SO_REUSEADDR too, so a port in TIME_WAIT counts as free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def accepts(port: int) -> bool:
    """True when something accepts TCP connections on 127.0.0.1:``port``."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def answers(bootstrap: str, timeout: float) -> bool:
    """True when a metadata request to ``bootstrap`` is answered with at least one broker."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    # A logger keeps librdkafka's connection-refused lines off stderr while we poll.
    config: dict[str, Any] = {"bootstrap.servers": bootstrap, "logger": log}
    admin = AdminClient(config)
    try:
        metadata = admin.list_topics(timeout=timeout)
    except KafkaException:
        return False
    return bool(metadata.brokers)
