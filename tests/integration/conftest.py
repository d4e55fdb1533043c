"""The one real-broker fixture of the integration suite, and per-test isolation helpers.

Integration tests never skip for want of a broker: they use ``KAFKA_BOOTSTRAP_SERVERS``
when set, a testcontainers Kafka when a Docker engine answers, and otherwise start the
embedded broker (``streams.broker``) for the session and stop it afterwards. Each test gets
a fresh topic prefix, so tests share the broker but never each other's topics or groups.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path
from uuid import uuid4

import pytest
from confluent_kafka.admin import AdminClient

from streams import broker
from streams.errors import BrokerError

log = logging.getLogger(__name__)

_HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test under tests/integration as ``integration`` (``-m 'not integration'``).

    This hook sees the whole session's items, so it filters on the test's path.
    """
    for item in items:
        if item.path.resolve().is_relative_to(_HERE):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Bootstrap servers of a real Kafka for the whole session (configured, Docker, embedded)."""
    configured = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "").strip()
    if configured:
        yield configured
        return

    if broker.docker_available():
        try:
            bootstrap, container = broker.start_testcontainer()
        except BrokerError as exc:
            # A Docker engine that cannot pull or run the image must not fail the suite:
            # the embedded broker below is just as real.
            log.warning("testcontainers Kafka failed (%s); using the embedded broker", exc)
        else:
            try:
                yield bootstrap
            finally:
                container.stop()  # type: ignore[attr-defined]
            return

    home = tmp_path_factory.mktemp("kafka-broker")
    info = broker.start(home=home, progress=lambda message: log.info("%s", message))
    try:
        yield info.bootstrap
    finally:
        broker.stop(home)


@pytest.fixture(scope="session")
def admin(kafka_bootstrap: str) -> AdminClient:
    """An AdminClient on the session broker, for creating and inspecting topics."""
    return AdminClient({"bootstrap.servers": kafka_bootstrap})


@pytest.fixture
def prefix() -> str:
    """A topic prefix (and consumer-group stem) that no other test uses."""
    return f"t{uuid4().hex[:10]}"
