"""Kafka plumbing shared by every role: topic names, client configs, topic admin.

The joiner joins by request_id inside one partition, which is only correct when requests,
predictions and labels have the same partition count and the same key (and the joiner's
state changelog too). :func:`ensure_topics` creates them so; :func:`check_copartitioned`
refuses to run against topics that are not.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic

from streams.clientlog import CLIENT_LOG
from streams.config import Config, is_secret
from streams.errors import BrokerError, ConfigError, TopicLayoutError, UnderstudyError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Topics:
    """Topic names of one deployment, derived from its prefix."""

    prefix: str

    @property
    def requests(self) -> str:
        return f"{self.prefix}.requests"

    @property
    def predictions(self) -> str:
        return f"{self.prefix}.predictions"

    @property
    def labels(self) -> str:
        return f"{self.prefix}.labels"

    @property
    def joiner_state(self) -> str:
        """Compacted changelog of the joiner's per-partition state."""
        return f"{self.prefix}.joiner-state"

    @property
    def partials(self) -> str:
        return f"{self.prefix}.partials"

    @property
    def metrics(self) -> str:
        return f"{self.prefix}.metrics"

    @property
    def alerts(self) -> str:
        return f"{self.prefix}.alerts"

    @property
    def verdicts(self) -> str:
        return f"{self.prefix}.verdicts"

    @property
    def control(self) -> str:
        """Promotions (``Control`` events) the tap follows: one partition, compacted."""
        return f"{self.prefix}.control"

    @property
    def tap_stats(self) -> str:
        """The taps' counters (``TapStats``), keyed by tap instance, compacted."""
        return f"{self.prefix}.tap-stats"

    @property
    def deadletter(self) -> str:
        return f"{self.prefix}.deadletter"

    @property
    def copartitioned(self) -> tuple[str, ...]:
        return (self.requests, self.predictions, self.labels, self.joiner_state)


def client_config(cfg: Config, **extra: Any) -> dict[str, Any]:
    """librdkafka settings: bootstrap, the user's pass-through options, then ``extra``.

    librdkafka's log lines and client errors go to the shared rate-limited
    :data:`streams.clientlog.CLIENT_LOG` (``logger`` and ``error_cb``; ``extra`` may
    replace either), so an outage is not a flood of lines on stderr.
    """
    if not cfg.bootstrap_servers:
        raise BrokerError(
            "no Kafka bootstrap servers: set KAFKA_BOOTSTRAP_SERVERS, or start the embedded "
            "broker with `understudy broker start`"
        )
    conf: dict[str, Any] = {"bootstrap.servers": cfg.bootstrap_servers}
    conf.update(cfg.kafka)
    conf["logger"] = CLIENT_LOG
    conf["error_cb"] = CLIENT_LOG.error_cb
    conf.update(extra)
    return conf


#: Seconds a command waits for the first answer of a broker before it gives up.
REACH_TIMEOUT_S: Final = 10.0

#: Client errors that no retry will cure: credentials or TLS refused.
_REFUSED: Final = frozenset(
    {
        KafkaError._AUTHENTICATION,
        KafkaError._SSL,
        KafkaError.SASL_AUTHENTICATION_FAILED,
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.CLUSTER_AUTHORIZATION_FAILED,
    }
)

#: librdkafka configuration warnings that mean "this option of yours is ignored".
_IGNORED_OPTION_WARNINGS: Final = ("only applies when", "is not configured for")


class _Captured:
    """A librdkafka ``logger`` that keeps the lines instead of printing them."""

    def __init__(self) -> None:
        self.lines: list[tuple[int, str]] = []

    def log(self, level: int, msg: str, *args: Any) -> None:
        try:
            self.lines.append((level, msg % args if args else msg))
        except (TypeError, ValueError):
            self.lines.append((level, msg))


def scrub(text: str, cfg: Config) -> str:
    """``text`` with the value of every secret client option masked."""
    for option, value in cfg.kafka.items():
        if value and is_secret(option):
            text = text.replace(value, "***")
    return text


def validate_client_options(cfg: Config) -> None:
    """Refuse a bad ``kafka:`` option at start, with a message that names it.

    librdkafka checks names and values when a client is constructed, without connecting:
    a throwaway producer and consumer (no bootstrap servers, so they never connect) are
    built from the user's options. A typo (``sasl.mechanismz``), an invalid value, an
    unreadable certificate, or an option that librdkafka would accept and then ignore
    (``sasl.username`` without a SASL ``security.protocol``) is a :class:`ConfigError`.
    The value of a secret option never appears in the message.
    """
    if not cfg.kafka:
        return
    for kind in ("producer", "consumer"):
        captured = _Captured()
        conf: dict[str, Any] = {**cfg.kafka, "logger": captured}
        try:
            if kind == "producer":
                Producer(conf).flush(0)
            else:
                conf["group.id"] = "understudy-validate"
                Consumer(conf).close()
        except (KafkaException, ValueError, TypeError) as exc:
            detail = exc.args[0].str() if exc.args and isinstance(exc.args[0], KafkaError) else exc
            raise ConfigError(
                f"invalid Kafka client option in `kafka:` (or UNDERSTUDY_KAFKA_*): "
                f"{scrub(str(detail), cfg)}"
            ) from None
        for _level, line in captured.lines:
            if "CONFWARN" not in line:
                continue
            text = line.split("]: ", 1)[-1]
            if any(marker in text for marker in _IGNORED_OPTION_WARNINGS):
                raise ConfigError(
                    f"Kafka client option would be ignored: {scrub(text, cfg)}; "
                    "remove it or set what it depends on"
                )


def check_reachable(cfg: Config, timeout: float = REACH_TIMEOUT_S) -> None:
    """Raise a one-line :class:`BrokerError` unless a broker answers within ``timeout``.

    Every command calls this before it builds its stage, so that with no broker it fails
    in seconds with the cause (``Connection refused``, a DNS failure, refused credentials)
    instead of retrying for minutes or printing librdkafka's connection attempts: this
    client's log lines are kept, not printed. Refused credentials or TLS end the wait at
    once, since no retry cures them.
    """
    captured = _Captured()
    errors: list[KafkaError] = []
    client = AdminClient(client_config(cfg, logger=captured, error_cb=errors.append))
    deadline = time.monotonic() + timeout
    failure: object = "no answer"
    while True:
        try:
            client.list_topics(timeout=max(0.1, min(1.0, deadline - time.monotonic())))
            return
        except KafkaException as exc:
            failure = exc.args[0].str() if exc.args and isinstance(exc.args[0], KafkaError) else exc
        client.poll(0)
        causes = [e for e in errors if e.code() != KafkaError._ALL_BROKERS_DOWN]
        refused = [e for e in causes if e.code() in _REFUSED or e.fatal()]
        if refused:
            raise BrokerError(
                f"Kafka at {cfg.bootstrap_servers} refused the client: "
                f"{scrub(refused[-1].str(), cfg)}"
            )
        if causes:
            failure = causes[-1].str()
        if time.monotonic() >= deadline:
            raise BrokerError(
                f"cannot reach Kafka at {cfg.bootstrap_servers} within {timeout:.0f} s: "
                f"{scrub(str(failure), cfg)}"
            )


def admin(cfg: Config) -> AdminClient:
    return AdminClient(client_config(cfg))


def topic_specs(cfg: Config) -> list[NewTopic]:
    t = Topics(cfg.prefix)
    rf = cfg.replication_factor
    specs = [NewTopic(name, cfg.partitions, rf) for name in (t.requests, t.predictions, t.labels)]
    specs.append(NewTopic(t.joiner_state, cfg.partitions, rf, config={"cleanup.policy": "compact"}))
    for name in (t.partials, t.metrics):
        specs.append(NewTopic(name, cfg.evaluator_partitions, rf))
    for name in (t.alerts, t.verdicts):
        specs.append(
            NewTopic(name, cfg.evaluator_partitions, rf, config={"cleanup.policy": "compact"})
        )
    for name in (t.control, t.tap_stats):
        specs.append(NewTopic(name, 1, rf, config={"cleanup.policy": "compact"}))
    specs.append(NewTopic(t.deadletter, 1, rf))
    return specs


def partition_counts(cfg: Config, names: list[str], timeout: float = 15.0) -> dict[str, int]:
    """Partition count of each existing topic among ``names`` (missing ones are left out)."""
    client = admin(cfg)
    try:
        md = client.list_topics(timeout=timeout)
    except KafkaException as exc:
        raise BrokerError(f"cannot reach Kafka at {cfg.bootstrap_servers}: {exc}") from exc
    return {
        n: len(md.topics[n].partitions) for n in names if n in md.topics and not md.topics[n].error
    }


def ensure_topics(cfg: Config, timeout: float = 30.0) -> list[str]:
    """Create the deployment's topics that do not exist; return the names created.

    Existing topics are left alone, then the co-partitioning is checked, so that a
    deployment with mismatched topics is refused rather than silently mis-joined.
    """
    specs = topic_specs(cfg)
    existing = partition_counts(cfg, [s.topic for s in specs], timeout)
    missing = [s for s in specs if s.topic not in existing]
    created: list[str] = []
    if missing:
        client = admin(cfg)  # keep a reference: the futures die with their client
        futures = client.create_topics(missing, operation_timeout=timeout)
        for name, fut in futures.items():
            try:
                fut.result(timeout=timeout)
                created.append(name)
            except KafkaException as exc:
                if "TOPIC_ALREADY_EXISTS" not in str(exc):
                    raise BrokerError(f"cannot create topic {name}: {exc}") from exc
        _await_metadata(cfg, [s.topic for s in missing], timeout)
    check_copartitioned(cfg)
    return created


def _await_metadata(cfg: Config, names: list[str], timeout: float) -> None:
    """Wait until metadata lists ``names`` with their partitions.

    A created topic's future completes when the controller has it; the broker that answers
    metadata learns of it a little later (seen: "missing topics" just after creation on a
    freshly started broker).
    """
    deadline = time.monotonic() + timeout
    while True:
        counts = partition_counts(cfg, names, timeout)
        if all(n in counts for n in names) or time.monotonic() >= deadline:
            return  # check_copartitioned says what is still missing
        time.sleep(0.1)


def check_copartitioned(cfg: Config, timeout: float = 15.0) -> int:
    """Partition count shared by the joined topics, or a clear :class:`TopicLayoutError`."""
    names = list(Topics(cfg.prefix).copartitioned)
    counts = partition_counts(cfg, names, timeout)
    missing = [n for n in names if n not in counts]
    if missing:
        raise TopicLayoutError(
            f"missing topics {', '.join(missing)}: run `understudy topics create` "
            f"(prefix {cfg.prefix!r})"
        )
    if len(set(counts.values())) != 1:
        detail = ", ".join(f"{n}={c}" for n, c in counts.items())
        raise TopicLayoutError(
            "topics are not co-partitioned, so requests and predictions of one request_id "
            f"could land in different partitions and never join: {detail}. Recreate them "
            "with the same partition count."
        )
    return next(iter(counts.values()))


def committed_reader(cfg: Config, group: str, **overrides: Any) -> Consumer:
    """A consumer for reading state back: committed records only, and it commits nothing."""
    return Consumer(
        client_config(
            cfg,
            **{"group.id": group, "enable.auto.commit": False, "isolation.level": "read_committed"},
            **overrides,
        )
    )


def read_range(
    reader: Consumer, topic: str, partition: int, start: int, end: int, timeout: float
) -> Iterator[Message]:
    """The committed records of ``topic[partition]`` from ``start`` up to offset ``end``.

    Assigns ``reader`` at ``start`` and reads until its position passes ``end`` (past
    transaction markers and aborted records, which read_committed never delivers).
    """
    tp = TopicPartition(topic, partition)
    reader.assign([TopicPartition(topic, partition, start)])
    deadline = time.monotonic() + timeout
    while reader.position([tp])[0].offset < end:
        for m in reader.consume(num_messages=10000, timeout=0.2):
            offset = m.offset()
            if m.error() is None and offset is not None and offset < end:
                yield m
        if time.monotonic() > deadline:
            raise UnderstudyError(
                f"reading {topic}[{partition}] did not reach offset {end} in {timeout:.0f} s"
            )


def read_compacted(
    cfg: Config, topic: str, partition: int, *, group: str, timeout: float = 120.0
) -> dict[bytes, bytes | None]:
    """The latest committed value of every key in one partition of a changelog topic.

    Restoring state after a crash: read_committed skips what an aborted (killed) batch
    wrote, and a key's last record wins, so a tombstone comes back as ``None``.
    """
    reader = committed_reader(cfg, group)
    state: dict[bytes, bytes | None] = {}
    try:
        low, high = reader.get_watermark_offsets(TopicPartition(topic, partition), timeout=30)
        if high <= low:
            return state
        for m in read_range(reader, topic, partition, OFFSET_BEGINNING, high, timeout):
            key = m.key()
            if key is not None:
                state[key] = m.value()
    finally:
        reader.close()
    return state
