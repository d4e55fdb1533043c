"""The embedded broker's preflight: missing tools fail early and say what to install.

No broker is started here: PATH points at directories holding nothing, or fake ``java``
scripts that print a chosen version, and every test checks that nothing was launched.
"""

from __future__ import annotations

import re
import stat
import time
from pathlib import Path

import pytest

from streams import broker
from streams.broker import container, jars, node, properties
from streams.errors import BrokerError, MissingToolError


@pytest.fixture
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty PATH, no JAVA_HOME, and a cache directory of our own."""
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("UNDERSTUDY_HOME", str(tmp_path / "cache"))
    return empty


def _fake_tool(directory: Path, name: str, stderr: str) -> None:
    script = directory / name
    script.write_text(f"#!/bin/sh\necho '{stderr}' >&2\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


def _assert_nothing_started(home: Path) -> None:
    for name in ("broker.json", "broker.log", "server.properties"):
        assert not (home / name).exists(), name


def test_no_java_no_maven_says_what_to_install(isolated: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    with pytest.raises(MissingToolError) as caught:
        broker.start(home=home)
    message = str(caught.value)
    assert "Java 17+" in message and "Maven" in message
    assert "apt-get install openjdk-17-jre-headless maven" in message
    assert "KAFKA_BOOTSTRAP_SERVERS" in message
    _assert_nothing_started(home)
    assert isinstance(caught.value, BrokerError)


def test_resolve_jars_without_maven(isolated: Path) -> None:
    _fake_tool(isolated, "java", 'openjdk version "17.0.15" 2025-04-15')
    with pytest.raises(MissingToolError, match=r"Maven \(`mvn` not found") as caught:
        broker.resolve_jars()
    assert "Java" not in str(caught.value).split(". Install")[0]
    assert not broker.jars_dir().exists()


def test_old_java_is_refused(isolated: Path, tmp_path: Path) -> None:
    _fake_tool(isolated, "java", 'java version "1.8.0_292"')
    home = tmp_path / "home"
    with pytest.raises(MissingToolError, match=r"found Java 8 at "):
        broker.start(home=home)
    _assert_nothing_started(home)


def test_java_home_is_preferred(
    isolated: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    java_home = tmp_path / "jdk"
    (java_home / "bin").mkdir(parents=True)
    _fake_tool(java_home / "bin", "java", 'openjdk version "11.0.2"')
    monkeypatch.setenv("JAVA_HOME", str(java_home))
    with pytest.raises(MissingToolError, match=re.escape(f"found Java 11 at {java_home}")):
        broker.start(home=tmp_path / "home")


def test_cached_jars_need_no_maven(isolated: Path) -> None:
    """Once resolved, the jars are reused without Maven (nor network)."""
    jars = broker.jars_dir()
    jars.mkdir(parents=True)
    (jars / "kafka.jar").write_bytes(b"")
    (jars / ".complete").write_text('{"kafka": "4.4.0", "jars": ["kafka.jar"]}')
    assert broker.resolve_jars() == jars


@pytest.mark.parametrize(
    ("output", "major"),
    [
        ('openjdk version "17.0.15" 2025-04-15', 17),
        ('openjdk version "21" 2023-09-19', 21),
        ('java version "1.8.0_292"', 8),
        ('openjdk version "25-ea" 2025-09-16', 25),
        ("no version here", None),
    ],
)
def test_java_version_parsing(output: str, major: int | None) -> None:
    assert jars.java_major(output) == major


def test_cache_dir_honours_understudy_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UNDERSTUDY_HOME", str(tmp_path))
    assert broker.cache_dir() == tmp_path
    assert broker.jars_dir() == tmp_path / f"kafka-{broker.KAFKA_VERSION}" / "jars"


def test_status_and_stop_of_an_empty_home(tmp_path: Path) -> None:
    assert broker.status(tmp_path / "nothing") is None
    assert broker.stop(tmp_path / "nothing") is False
    assert not (tmp_path / "nothing").exists()


def test_a_stale_record_is_not_a_broker(tmp_path: Path) -> None:
    """A broker.json left by a reboot (dead pid, or a pid reused by another program)."""
    (tmp_path / "broker.json").write_text(
        '{"pid": 1, "bootstrap": "127.0.0.1:9", "port": 9}'  # pid 1 is never our Kafka
    )
    assert broker.status(tmp_path) is None
    assert broker.stop(tmp_path) is False
    assert not (tmp_path / "broker.json").exists()


def test_server_properties_have_single_node_settings(tmp_path: Path) -> None:
    text = properties.server_properties(9092, 9093, tmp_path)
    settings = dict(line.split("=", 1) for line in text.splitlines() if not line.startswith("#"))
    assert settings["process.roles"] == "broker,controller"
    assert settings["controller.quorum.voters"] == "1@127.0.0.1:9093"
    assert settings["advertised.listeners"] == "PLAINTEXT://127.0.0.1:9092"
    assert settings["transaction.state.log.min.isr"] == "1"
    assert settings["transaction.state.log.replication.factor"] == "1"
    assert settings["offsets.topic.replication.factor"] == "1"
    assert settings["group.initial.rebalance.delay.ms"] == "0"
    assert settings["log.dirs"] == str(tmp_path)


def test_container_env_uses_the_same_settings() -> None:
    env = container.container_env(19092, "localhost", "abc")
    assert env["KAFKA_ADVERTISED_LISTENERS"] == "PLAINTEXT://localhost:19092"
    assert env["KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"] == "1"
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert env["CLUSTER_ID"] == "abc"


def test_fallback_pom_matches_the_shipped_pom() -> None:
    """The copy used by non-editable installs must resolve the same versions."""
    shipped = jars.POM.read_text()
    in_repository = Path(__file__).resolve().parents[2] / "deploy" / "kafka" / "pom.xml"
    assert in_repository == jars.POM
    for name in ("kafka", "log4j", "slf4j"):
        version = re.search(rf"<{name}\.version>([^<]+)<", shipped)
        assert version is not None, name
        assert version.group(1) in jars.fallback_pom(), name
    assert f"<kafka.version>{broker.KAFKA_VERSION}<" in shipped


def test_cluster_ids_are_kafka_uuids() -> None:
    ids = {node.new_cluster_id() for _ in range(200)}
    assert len(ids) == 200
    assert all(re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_-]{21}", i) for i in ids)


def test_docker_probe_is_fast_and_never_raises() -> None:
    started = time.monotonic()
    assert isinstance(broker.docker_available(), bool)
    assert time.monotonic() - started < 10


def test_every_public_name_is_importable_from_the_package() -> None:
    """The split into modules kept ``streams.broker``'s public names where callers find them."""
    for name in broker.__all__:
        assert getattr(broker, name) is not None, name
    image = broker.KAFKA_IMAGE
    assert image == f"apache/kafka:{broker.KAFKA_VERSION}"  # Docker runs what Maven resolves
