"""An online learner's reader of ``<prefix>.labels``: its own consumer, positioned by hand.

Why a consumer of its own, with manual assignment: it follows the partitions of
``<prefix>.requests`` that the worker's group gives the worker (labels are co-partitioned
with requests, keyed by request_id), because the group's assignor is the user's choice and
only the range assignor would put the same partitions of both topics on one member. Its
offsets are never committed to Kafka: the next one of each partition (:attr:`LabelsReader.next`)
is part of the learner's checkpoint (:mod:`streams.learning.checkpoint`), so the offsets
always agree with the model they produced.

Where a partition is read from is the learner's decision
(:class:`streams.learning.learner.OnlineLearner`): a known offset (:meth:`LabelsReader.assign`,
after a restart or a rebalance), or the labels stamped from the first request scored there
(:meth:`LabelsReader.assign_from_times`). This module only reads: it decodes each label
into ``(partition, request_id, event time, target)`` and counts the ones that teach nothing;
pairing them with features is the store's work (:mod:`streams.learning.store`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from streams.clientlog import CLIENT_LOG
from streams.config import Config
from streams.errors import SchemaError, UnderstudyError
from streams.kafka import Topics, client_config
from streams.schemas import Record

__all__ = ["KAFKA_CALL_S", "LABELS_PER_POLL", "LABEL_SLACK_MS", "Label", "LabelsReader"]

log = logging.getLogger(__name__)

#: How far before a partition's first scored request its labels are read from (clock skew
#: between the service's and the label source's producers).
LABEL_SLACK_MS = 60_000
#: Labels read per poll, at most.
LABELS_PER_POLL = 5_000
#: Bound on each look-up of where to read a partition (offsets for times, watermarks).
KAFKA_CALL_S = 30.0

#: One decoded label: (partition, request_id, event time, target value or class).
Label = tuple[int, str, int, Any]


class LabelsReader:
    """The labels consumer of one learner, and the next offset of each partition it read."""

    def __init__(
        self, cfg: Config, model_id: str, decode: Callable[[str, bytes | None], Record]
    ) -> None:
        self.cfg = cfg
        self.model_id = model_id
        self.topic = Topics(cfg.prefix).labels
        #: per partition, the offset of the next label to read (checkpointed)
        self.next: dict[int, int] = {}
        #: labels not decodable, or without a request_id or a target
        self.bad = 0
        self._decode = decode
        self._reading: set[int] = set()  # partitions assigned to the consumer
        self._consumer: Any = None

    @property
    def is_open(self) -> bool:
        return self._consumer is not None

    def open(self, error_cb: Callable[[KafkaError], None]) -> None:
        conf = client_config(self.cfg, error_cb=error_cb)
        conf.update(
            {
                # never subscribes nor commits: the group id only names the client
                "group.id": f"{self.cfg.prefix}.learner.{self.model_id}",
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": "earliest",
                "isolation.level": "read_committed",
            }
        )
        try:
            self._consumer = Consumer(conf)
        except (KafkaException, ValueError, TypeError) as exc:
            raise UnderstudyError(
                f"learner {self.model_id}: cannot create its consumer: {exc}"
            ) from None

    def close(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            consumer.close()

    def assign(self, offsets: dict[int, int]) -> None:
        """Read those partitions from those offsets on."""
        if not offsets:
            return
        assert self._consumer is not None
        tps = [TopicPartition(self.topic, p, o) for p, o in sorted(offsets.items())]
        self._consumer.incremental_assign(tps)
        self._reading.update(offsets)
        self.next.update(offsets)

    def assign_from_times(self, stamps: dict[int, int], horizon_ms: int) -> None:
        """Read each partition from the labels stamped from its first scored request (less
        :data:`LABEL_SLACK_MS`; ``horizon_ms`` back from now when the request had no
        timestamp); from the end of the topic when there are none yet."""
        assert self._consumer is not None
        now = int(time.time() * 1000)
        wanted = [
            TopicPartition(self.topic, p, (ts if ts > 0 else now - horizon_ms) - LABEL_SLACK_MS)
            for p, ts in sorted(stamps.items())
        ]
        found = self._consumer.offsets_for_times(wanted, timeout=KAFKA_CALL_S)
        offsets: dict[int, int] = {}
        for tp in found:
            offset = tp.offset
            if offset < 0:  # no label stamped that late yet: start at the end
                offset = self._consumer.get_watermark_offsets(
                    TopicPartition(self.topic, tp.partition), timeout=KAFKA_CALL_S
                )[1]
            offsets[tp.partition] = offset
        self.assign(offsets)

    def unassign(self, partitions: Sequence[int]) -> None:
        """Stop reading those partitions (their next offsets are kept for a return)."""
        reading = [TopicPartition(self.topic, p) for p in partitions if p in self._reading]
        if reading and self._consumer is not None:
            try:
                self._consumer.incremental_unassign(reading)
            except KafkaException as exc:
                log.warning("learner %s: unassigning labels failed: %s", self.model_id, exc)
        self._reading.difference_update(partitions)

    def poll(self) -> tuple[int, list[Label]]:
        """The labels that are there (no wait): how many were read, and the usable ones."""
        if not self._reading or self._consumer is None:
            return 0, []
        messages = self._consumer.consume(num_messages=LABELS_PER_POLL, timeout=0)
        read = 0
        labels: list[Label] = []
        decode, reading, nxt = self._decode, self._reading, self.next
        for msg in messages:
            err = msg.error()
            if err is not None:
                CLIENT_LOG.error_cb(err)
                continue
            p, offset = msg.partition(), msg.offset()
            if p is None or offset is None or p not in reading:
                continue
            nxt[p] = offset + 1
            read += 1
            try:
                label = decode("Label", msg.value())
            except SchemaError:
                self.bad += 1  # the joiner dead-letters it; here it teaches nothing
                continue
            y = label["value"] if label["value"] is not None else label["label"]
            if y is None or not label["request_id"]:
                self.bad += 1
                continue
            labels.append((p, label["request_id"], label["event_time"], y))
        return read, labels
