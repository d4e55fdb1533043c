"""Configuration: defaults, precedence (file < environment < overrides), validation,
secret redaction, and the Kafka client settings and topic layout derived from it.

No broker: ``client_config`` and ``topic_specs`` only build dicts and ``NewTopic`` specs.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from streams.clientlog import CLIENT_LOG
from streams.config import OTHER_VARIABLES, Config, is_secret
from streams.errors import BrokerError, ConfigError
from streams.kafka import Topics, client_config, topic_specs, validate_client_options

SECRET = "hunter2-s3cr3t"
KEY_SECRET = "pem-passphrase-42"


def options(conf: dict[str, Any]) -> dict[str, Any]:
    """A client config without the logging hooks ``client_config`` attaches."""
    return {k: v for k, v in conf.items() if k not in ("logger", "error_cb")}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "understudy.yaml"
    path.write_text(text)
    return path


# -- defaults and precedence ---------------------------------------------------------


def test_defaults() -> None:
    cfg = Config.load(env={})
    assert cfg == Config()
    assert cfg.bootstrap_servers == ""
    assert cfg.prefix == "understudy"
    assert cfg.partitions == 6
    assert cfg.evaluator_partitions == 1
    assert cfg.replication_factor == 1
    assert cfg.window_ms == 10_000
    assert cfg.lateness_ms == 2_000
    assert cfg.join_ttl_ms == 60_000
    assert cfg.idle_flush_ms == 3_000
    assert cfg.kafka == {}


def test_config_is_frozen() -> None:
    cfg = Config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.partitions = 3  # type: ignore[misc]


def test_file_then_env_then_overrides(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "prefix: fromfile\npartitions: 3\nwindow_ms: 5000\nlateness_ms: 100\n"
        "bootstrap_servers: file:9092\n",
    )
    env = {"UNDERSTUDY_PARTITIONS": "4", "UNDERSTUDY_WINDOW_MS": "7000"}
    cfg = Config.load(path, env=env, window_ms=9000, prefix=None)
    assert cfg.prefix == "fromfile"  # file only (a None override is ignored)
    assert cfg.partitions == 4  # env beats file
    assert cfg.window_ms == 9000  # override beats env and file
    assert cfg.lateness_ms == 100
    assert cfg.bootstrap_servers == "file:9092"
    assert isinstance(cfg.partitions, int) and isinstance(cfg.window_ms, int)


def test_config_file_from_understudy_config_env(tmp_path: Path) -> None:
    path = write(tmp_path, "prefix: viaenv\n")
    cfg = Config.load(env={"UNDERSTUDY_CONFIG": str(path)})
    assert cfg.prefix == "viaenv"


def test_os_environ_is_the_default_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UNDERSTUDY_PREFIX", "fromosenv")
    monkeypatch.delenv("UNDERSTUDY_CONFIG", raising=False)
    assert Config.load().prefix == "fromosenv"


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    assert Config.load(write(tmp_path, ""), env={}) == Config()


def test_kafka_bootstrap_servers_env() -> None:
    cfg = Config.load(env={"KAFKA_BOOTSTRAP_SERVERS": "b1:9092,b2:9092"})
    assert cfg.bootstrap_servers == "b1:9092,b2:9092"
    assert client_config(cfg)["bootstrap.servers"] == "b1:9092,b2:9092"


def test_kafka_bootstrap_servers_env_beats_file_and_override_beats_env(tmp_path: Path) -> None:
    path = write(tmp_path, "bootstrap_servers: file:9092\n")
    env = {"KAFKA_BOOTSTRAP_SERVERS": "env:9092"}
    assert Config.load(path, env=env).bootstrap_servers == "env:9092"
    assert Config.load(path, env=env, bootstrap_servers="cli:9092").bootstrap_servers == (
        "cli:9092"
    )


def test_other_understudy_variables_are_not_config_keys() -> None:
    env = {"UNDERSTUDY_HOME": "/tmp/x", "UNDERSTUDY_SCHEMA_DIR": "/tmp/s", "HOME": "/root"}
    assert Config.load(env=env) == Config()
    assert Config.load(env=dict.fromkeys(OTHER_VARIABLES - {"UNDERSTUDY_CONFIG"}, "x")) == (
        Config()
    )


@pytest.mark.parametrize(
    ("variable", "closest"),
    [
        ("UNDERSTUDY_PARTITONS", "UNDERSTUDY_PARTITIONS"),
        ("UNDERSTUDY_WINDOWMS", "UNDERSTUDY_WINDOW_MS"),
        ("UNDERSTUDY_SCHEMADIR", "UNDERSTUDY_SCHEMA_DIR"),
        ("UNDERSTUDY_KAFAK_SASL_USERNAME", "UNDERSTUDY_KAFKA_SASL_USERNAME"),
        ("UNDERSTUDY_PREFIXX", "UNDERSTUDY_PREFIX"),
    ],
)
def test_misspelled_environment_variable_is_refused_with_the_closest_name(
    variable: str, closest: str
) -> None:
    with pytest.raises(ConfigError) as info:
        Config.load(env={variable: "3", "UNDERSTUDY_PREFIX": "ok"})
    assert f"{variable} (did you mean {closest}?)" in str(info.value)


def test_unknown_environment_variable_never_shows_its_value() -> None:
    with pytest.raises(ConfigError, match="UNDERSTUDY_NOTHING_LIKE_IT") as info:
        Config.load(env={"UNDERSTUDY_NOTHING_LIKE_IT": SECRET})
    assert SECRET not in str(info.value)


def test_misspelled_file_key_names_the_closest_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"join_tll_ms \(did you mean join_ttl_ms\?\)"):
        Config.load(write(tmp_path, "join_tll_ms: 5\n"), env={})


def test_schema_registry_url_is_refused_with_the_reason(tmp_path: Path) -> None:
    reason = "schema registries are not supported yet: messages use Avro single-object"
    with pytest.raises(ConfigError, match=reason):
        Config.load(write(tmp_path, "schema_registry_url: http://r:8081\n"), env={})
    with pytest.raises(ConfigError, match=f"UNDERSTUDY_SCHEMA_REGISTRY_URL .{reason}"):
        Config.load(env={"UNDERSTUDY_SCHEMA_REGISTRY_URL": "http://r:8081"})
    with pytest.raises(ConfigError, match=reason):
        Config.load(env={}, schema_registry_url="http://r:8081")
    assert "schema_registry_url" not in Config().redacted()


# -- unknown keys and invalid values -----------------------------------------------------


def test_unknown_key_in_file_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, "prefix: ok\npartitons: 3\n")  # typo
    with pytest.raises(ConfigError, match="partitons"):
        Config.load(path, env={})


def test_unknown_override_is_named() -> None:
    with pytest.raises(ConfigError, match="window_size"):
        Config.load(env={}, window_size=5)


def test_file_that_is_not_a_mapping(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="mapping"):
        Config.load(write(tmp_path, "- a\n- b\n"), env={})


def test_missing_or_broken_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        Config.load(tmp_path / "nope.yaml", env={})
    with pytest.raises(ConfigError, match="cannot read config file"):
        Config.load(write(tmp_path, "prefix: [unclosed\n"), env={})


@pytest.mark.parametrize(
    ("changes", "word"),
    [
        ({"partitions": 0}, "partitions"),
        ({"partitions": -2}, "partitions"),
        ({"evaluator_partitions": 0}, "evaluator_partitions"),
        ({"replication_factor": 0}, "replication_factor"),
        ({"window_ms": 0}, "window_ms"),
        ({"join_ttl_ms": -1}, "join_ttl_ms"),
        ({"idle_flush_ms": 0}, "idle_flush_ms"),
        ({"lateness_ms": -1}, "lateness_ms"),
        ({"prefix": ""}, "prefix"),
        ({"prefix": "has space"}, "prefix"),
        ({"prefix": "a/b"}, "prefix"),
        ({"prefix": "a:b"}, "prefix"),
        ({"prefix": "a\\b"}, "prefix"),
    ],
)
def test_invalid_values(changes: dict[str, Any], word: str) -> None:
    with pytest.raises(ConfigError, match=word):
        Config.load(env={}, **changes)
    with pytest.raises(ConfigError, match=word):
        Config().replace(**changes)


def test_zero_lateness_is_valid() -> None:
    assert Config.load(env={}, lateness_ms=0).lateness_ms == 0


def test_non_integer_env_value() -> None:
    with pytest.raises(ConfigError, match="partitions"):
        Config.load(env={"UNDERSTUDY_PARTITIONS": "six"})


def test_invalid_value_in_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="partitions"):
        Config.load(write(tmp_path, "partitions: 0\n"), env={})
    with pytest.raises(ConfigError, match="kafka"):
        Config.load(write(tmp_path, "kafka: [a, b]\n"), env={})


def test_fractional_integer_setting_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="partitions"):
        Config.load(write(tmp_path, "partitions: 2.7\n"), env={})


def test_worker_exactly_once_from_file_env_and_to_env(tmp_path: Path) -> None:
    """A yes/no setting: YAML's booleans, and true/false/1/0/yes/no/on/off in the
    environment; anything else is refused; to_env hands it to a child process unchanged."""
    assert Config.load(env={}).worker_exactly_once is False
    assert Config.load(write(tmp_path, "worker_exactly_once: true\n"), env={}).worker_exactly_once
    for text, value in (("true", True), ("1", True), ("Yes", True), ("off", False)):
        env = {"UNDERSTUDY_WORKER_EXACTLY_ONCE": text}
        assert Config.load(env=env).worker_exactly_once is value
    with pytest.raises(ConfigError, match=r"worker_exactly_once.*expected true or false"):
        Config.load(env={"UNDERSTUDY_WORKER_EXACTLY_ONCE": "sometimes"})
    cfg = Config(worker_exactly_once=True)
    assert Config.load(env=cfg.to_env()).worker_exactly_once is True


# -- librdkafka pass-through and secrets -------------------------------------------------


def test_kafka_options_from_file_pass_through(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "bootstrap_servers: b:9093\nkafka:\n  security.protocol: SASL_SSL\n"
        "  sasl.mechanism: SCRAM-SHA-512\n  sasl.username: svc\n  socket.timeout.ms: 5000\n",
    )
    cfg = Config.load(path, env={})
    assert cfg.kafka == {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "svc",
        "socket.timeout.ms": "5000",
    }
    assert options(client_config(cfg)) == {"bootstrap.servers": "b:9093", **cfg.kafka}


def test_sasl_password_from_env_passes_through_and_is_redacted() -> None:
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": "b:9093",
        "UNDERSTUDY_KAFKA_SASL_PASSWORD": SECRET,
        "UNDERSTUDY_KAFKA_SASL_USERNAME": "svc",
        "UNDERSTUDY_KAFKA_SSL_KEY_PASSWORD": KEY_SECRET,
        "UNDERSTUDY_KAFKA_SSL_KEY_LOCATION": "/etc/kafka/client.key",
        "UNDERSTUDY_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
    }
    cfg = Config.load(env=env)
    assert cfg.kafka == {
        "sasl.password": SECRET,
        "sasl.username": "svc",
        "ssl.key.password": KEY_SECRET,
        "ssl.key.location": "/etc/kafka/client.key",
        "security.protocol": "SASL_SSL",
    }
    conf = client_config(cfg)
    assert conf["sasl.password"] == SECRET  # unchanged for librdkafka
    assert conf["ssl.key.password"] == KEY_SECRET
    for text in (repr(cfg), str(cfg), repr(cfg.redacted()), str(cfg.redacted())):
        assert SECRET not in text
        assert KEY_SECRET not in text
        assert "/etc/kafka/client.key" in text  # a key *location* is a path, not a secret
        assert "svc" in text
    red = cfg.redacted()
    assert red["kafka"]["sasl.password"] == "***"
    assert red["kafka"]["ssl.key.password"] == "***"
    assert red["kafka"]["ssl.key.location"] == "/etc/kafka/client.key"
    assert red["bootstrap_servers"] == "b:9093"
    assert cfg.kafka["sasl.password"] == SECRET  # redacting did not change the config


def test_secrets_given_in_file_or_override_are_redacted(tmp_path: Path) -> None:
    path = write(tmp_path, f"kafka:\n  sasl.password: {SECRET}\n")
    from_file = Config.load(path, env={})
    from_override = Config.load(env={}, kafka={"sasl.oauthbearer.client.secret": SECRET})
    for cfg in (from_file, from_override):
        assert SECRET in cfg.kafka.values()
        assert SECRET not in repr(cfg)
        assert SECRET not in repr(cfg.redacted())


@pytest.mark.parametrize(
    ("option", "secret"),
    [
        ("sasl.password", True),
        ("ssl.key.password", True),
        ("ssl.keystore.password", True),
        ("ssl.key.pem", True),
        ("sasl.oauthbearer.client.secret", True),
        ("ssl.key.location", False),
        ("ssl.keystore.location", False),
        ("ssl.ca.location", False),
        ("sasl.username", False),
        ("security.protocol", False),
        ("bootstrap.servers", False),
    ],
)
def test_is_secret(option: str, secret: bool) -> None:
    assert is_secret(option) is secret


def test_kafka_options_from_file_and_env_are_merged(tmp_path: Path) -> None:
    path = write(tmp_path, "kafka:\n  security.protocol: SASL_SSL\n  sasl.mechanism: PLAIN\n")
    cfg = Config.load(path, env={"UNDERSTUDY_KAFKA_SASL_PASSWORD": SECRET})
    assert cfg.kafka == {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "PLAIN",
        "sasl.password": SECRET,
    }


def test_invalid_kafka_value_does_not_leak_into_the_error(tmp_path: Path) -> None:
    path = write(tmp_path, f"kafka: sasl.password={SECRET}\n")
    with pytest.raises(ConfigError) as info:
        Config.load(path, env={})
    assert SECRET not in str(info.value)


# -- client config and topics ----------------------------------------------------------


def test_client_config_passes_options_unchanged_and_extra_last() -> None:
    kafka = {"security.protocol": "SSL", "ssl.ca.location": "/ca.pem", "client.id": "mine"}
    cfg = Config(bootstrap_servers="h:1", kafka=kafka)
    conf = client_config(cfg, **{"group.id": "g", "client.id": "override"})
    assert options(conf) == {
        "bootstrap.servers": "h:1",
        "security.protocol": "SSL",
        "ssl.ca.location": "/ca.pem",
        "client.id": "override",
        "group.id": "g",
    }
    assert cfg.kafka == kafka  # not mutated


def test_client_config_routes_librdkafka_logs_to_the_rate_limited_log() -> None:
    conf = client_config(Config(bootstrap_servers="h:1"))
    assert conf["logger"] is CLIENT_LOG
    assert conf["error_cb"] == CLIENT_LOG.error_cb
    own = client_config(Config(bootstrap_servers="h:1"), error_cb=print)
    assert own["error_cb"] is print  # a stage may take the errors itself


@pytest.mark.parametrize(
    ("kafka", "named"),
    [
        ({"sasl.mechanismz": "PLAIN"}, "sasl.mechanismz"),
        ({"security.protocol": "PLAINTXT"}, "security.protocol"),
        ({"isolation.level": "read_comitted"}, "isolation.level"),
        ({"enable.auto.commit": "maybe"}, "enable.auto.commit"),
        ({"session.timeout.ms": "soon"}, "session.timeout.ms"),
        ({"security.protocol": "SSL", "ssl.ca.location": "/nonexistent/ca.pem"}, "ssl.ca.location"),
        # accepted by librdkafka, then ignored: plaintext, the credentials never sent
        ({"sasl.username": "svc", "sasl.password": SECRET}, "sasl.username"),
    ],
)
def test_bad_kafka_option_is_refused_naming_it(kafka: dict[str, str], named: str) -> None:
    cfg = Config(bootstrap_servers="127.0.0.1:1", kafka={**kafka, "ssl.key.password": SECRET})
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")) as info:
        validate_client_options(cfg)
    assert SECRET not in str(info.value)


def test_good_kafka_options_pass_validation() -> None:
    kafka = {
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "svc",
        "sasl.password": SECRET,
        "isolation.level": "read_committed",  # a consumer option: fine for the producer
        "linger.ms": "20",  # a producer option: fine for the consumer
    }
    validate_client_options(Config(bootstrap_servers="127.0.0.1:1", kafka=kafka))
    validate_client_options(Config())


def test_client_config_without_bootstrap_gives_guidance() -> None:
    with pytest.raises(BrokerError) as info:
        client_config(Config())
    msg = str(info.value)
    assert "KAFKA_BOOTSTRAP_SERVERS" in msg
    assert "understudy broker start" in msg


@pytest.mark.parametrize("partitions", [1, 6, 12])
def test_topic_specs_copartition_the_joined_topics(partitions: int) -> None:
    cfg = Config(prefix="shadow1", partitions=partitions, evaluator_partitions=2)
    specs = {s.topic: s for s in topic_specs(cfg)}
    t = Topics("shadow1")
    assert len(specs) == len(topic_specs(cfg))  # no duplicates
    assert all(name.startswith("shadow1.") for name in specs)
    joined = [t.requests, t.predictions, t.labels, t.joiner_state]
    assert list(t.copartitioned) == joined
    assert {specs[n].num_partitions for n in joined} == {partitions}
    assert specs[t.joiner_state].config == {"cleanup.policy": "compact"}
    for name in (t.requests, t.predictions, t.labels):
        assert (specs[name].config or {}).get("cleanup.policy", "delete") != "compact"
    assert specs[t.partials].num_partitions == 2
    assert specs[t.metrics].num_partitions == 2
    for name in (t.alerts, t.verdicts, t.deadletter):
        assert name in specs


def test_topic_specs_use_the_replication_factor() -> None:
    specs = topic_specs(Config(replication_factor=3))
    assert {s.replication_factor for s in specs} == {3}


def test_to_env_hands_the_same_config_to_a_child_process() -> None:
    cfg = Config(
        bootstrap_servers="h:9092",
        prefix="p1",
        window_ms=2000,
        join_ttl_ms=5000,
        kafka={"security.protocol": "SASL_SSL", "sasl.password": "s3cret"},
    )
    assert Config.load(env=cfg.to_env()) == cfg
