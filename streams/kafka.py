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
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Message, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from streams.config import Config
from streams.errors import BrokerError, TopicLayoutError, UnderstudyError

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
    def deadletter(self) -> str:
        return f"{self.prefix}.deadletter"

    @property
    def copartitioned(self) -> tuple[str, ...]:
        return (self.requests, self.predictions, self.labels, self.joiner_state)


def client_config(cfg: Config, **extra: Any) -> dict[str, Any]:
    """librdkafka settings: bootstrap, the user's pass-through options, then ``extra``."""
    if not cfg.bootstrap_servers:
        raise BrokerError(
            "no Kafka bootstrap servers: set KAFKA_BOOTSTRAP_SERVERS, or start the embedded "
            "broker with `understudy broker start`"
        )
    conf: dict[str, Any] = {"bootstrap.servers": cfg.bootstrap_servers}
    conf.update(cfg.kafka)
    conf.update(extra)
    return conf


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


def committed_reader(cfg: Config, group: str) -> Consumer:
    """A consumer for reading state back: committed records only, and it commits nothing."""
    return Consumer(
        client_config(
            cfg,
            **{"group.id": group, "enable.auto.commit": False, "isolation.level": "read_committed"},
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
