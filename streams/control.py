"""Promotions: the ``Control`` events on ``<prefix>.control`` and the tap's follower of them.

The seed's loop ends with the candidate becoming the production model. Understudy does not
deploy anything itself: it publishes an order, a ``Control`` event (``understudy promote``,
or the evaluator with ``--auto-promote`` on a PROMOTE verdict), and the production service
obeys it through its tap: :class:`PrimaryFollower` reads the control topic in a background
thread and tells the service which model is primary now (``Tap.primary``, and an optional
callback), so the service switches without a redeploy.

The topic has one partition and is compacted on one key (:data:`CONTROL_KEY`), so the
latest order survives and a tap started later learns it by reading the topic from the
beginning.
"""

from __future__ import annotations

import contextlib
import getpass
import logging
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Producer, TopicPartition

from streams.config import Config
from streams.errors import BrokerError
from streams.kafka import Topics, client_config, partition_counts, read_compacted, scrub
from streams.schemas import Codec, default_codec

__all__ = [
    "CONTROL_KEY",
    "PrimaryFollower",
    "Promotion",
    "control_message",
    "current_primary",
    "operator",
    "promotion_record",
    "publish_control",
]

log = logging.getLogger(__name__)

#: The key of every Control event: the compacted topic keeps the latest order.
CONTROL_KEY: Final = b"primary"

Message = tuple[bytes, bytes]


def promotion_record(
    candidate: str,
    *,
    previous_primary: str,
    old_primary: str = "RETIRE",
    reason: str = "",
    comparison: str = "",
    who: str = "",
    now: int | None = None,
) -> dict[str, Any]:
    """A PROMOTE ``Control`` record; ``old_primary`` is RETIRE or SHADOW."""
    if not candidate:
        raise ValueError("the candidate to promote is empty")
    if old_primary not in ("RETIRE", "SHADOW"):
        raise ValueError(f"old_primary must be RETIRE or SHADOW, got {old_primary!r}")
    return {
        "action": "PROMOTE",
        "candidate": candidate,
        "previous_primary": previous_primary,
        "old_primary": old_primary,
        "reason": reason,
        "comparison": comparison,
        "time": int(time.time() * 1000) if now is None else now,
        "who": who,
    }


def control_message(codec: Codec, record: dict[str, Any]) -> Message:
    """A Control record as the (key, value) published on ``<prefix>.control``."""
    return CONTROL_KEY, codec.encode("Control", record)


def operator() -> str:
    """``user@host`` of whoever runs the command (the ``who`` of a manual promotion)."""
    try:
        user = getpass.getuser()
    except Exception:  # no login name in some containers
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def publish_control(cfg: Config, record: dict[str, Any], timeout: float = 15.0) -> None:
    """Publish one Control record and wait for the broker's acknowledgement.

    Raises :class:`BrokerError` when it is not acknowledged within ``timeout`` seconds.
    """
    key, value = control_message(default_codec(), record)
    errors: list[str] = []

    def delivered(err: Any, _msg: Any) -> None:
        if err is not None:
            errors.append(err.str())

    producer = Producer(client_config(cfg, **{"enable.idempotence": True, "acks": "all"}))
    producer.produce(Topics(cfg.prefix).control, value, key, on_delivery=delivered)
    left = producer.flush(timeout)
    if left or errors:
        why = errors[-1] if errors else f"not acknowledged within {timeout:.0f} s"
        raise BrokerError(
            f"cannot publish the promotion on {Topics(cfg.prefix).control}: {scrub(why, cfg)}"
        )


def current_primary(cfg: Config, candidate: str) -> str:
    """The primary a promotion of ``candidate`` replaces, as the topics know it.

    The latest promotion's candidate on ``<prefix>.control``; without one, the primary of
    ``candidate``'s latest verdict on ``<prefix>.verdicts``; else "" (unknown).
    """
    topics = Topics(cfg.prefix)
    codec = default_codec()
    group = f"{cfg.prefix}.promote-{uuid.uuid4().hex[:8]}"
    control = read_compacted(cfg, topics.control, 0, group=group, timeout=30.0)
    latest = control.get(CONTROL_KEY)
    if latest is not None:
        return str(codec.decode_as("Control", latest)["candidate"])
    best: tuple[int, str] = (-1, "")
    if topics.verdicts not in partition_counts(cfg, [topics.verdicts]):
        return ""
    for p in range(cfg.evaluator_partitions):
        verdicts = read_compacted(cfg, topics.verdicts, p, group=group, timeout=30.0)
        for key, value in verdicts.items():
            if value is None or not key.decode(errors="replace").startswith(candidate + "|"):
                continue
            rec = codec.decode_as("Verdict", value)
            best = max(best, (rec["emitted_at"], rec["primary"]))
    return best[1]


@dataclass(frozen=True)
class Promotion:
    """A promotion the service must obey: ``candidate`` is the primary from ``time`` on."""

    candidate: str
    previous_primary: str
    #: RETIRE: stop serving the old primary; SHADOW: keep it running as a shadow candidate
    old_primary: str
    reason: str
    time: int
    who: str
    comparison: str = ""

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> Promotion:
        return cls(
            candidate=rec["candidate"],
            previous_primary=rec["previous_primary"],
            old_primary=rec["old_primary"],
            reason=rec["reason"],
            time=rec["time"],
            who=rec["who"],
            comparison=rec["comparison"],
        )


#: Seconds between two looks for a control topic that does not exist yet.
_TOPIC_RETRY_S: Final = 2.0


class PrimaryFollower:
    """Follows ``<prefix>.control`` in a daemon thread; :attr:`primary` is the latest order.

    At start it reads the whole topic (it is small and compacted), applies the latest
    promotion, and calls ``on_promote`` once if that changed the primary; then it calls
    ``on_promote`` for each new promotion as it arrives. Nothing here blocks or raises into
    the service: a missing topic is looked for again every few seconds, an undecodable
    event is skipped and logged, and an exception from ``on_promote`` is logged.
    """

    def __init__(
        self,
        config: Config,
        *,
        primary: str | None = None,
        on_promote: Callable[[Promotion], None] | None = None,
        poll_s: float = 0.5,
    ) -> None:
        self.topic = Topics(config.prefix).control
        self._primary = primary
        self._last: Promotion | None = None
        self._on_promote = on_promote
        self._poll_s = poll_s
        self._codec = default_codec()
        self._stop = threading.Event()
        self.caught_up = threading.Event()
        self._consumer = Consumer(
            client_config(
                config,
                **{
                    # assign(), never subscribe(): no group is joined and nothing committed
                    "group.id": f"understudy-tap-control-{uuid.uuid4().hex[:12]}",
                    "enable.auto.commit": False,
                    "isolation.level": "read_committed",
                    "client.id": "understudy-tap-control",
                },
            )
        )
        self._thread = threading.Thread(
            target=self._run, name="understudy-tap-control", daemon=True
        )
        self._thread.start()

    @property
    def primary(self) -> str | None:
        """The model id the service should answer with now (None: no order yet)."""
        return self._primary

    @property
    def last_promotion(self) -> Promotion | None:
        """The latest promotion read, with who ordered it, why and the old primary's fate."""
        return self._last

    def close(self, timeout: float = 2.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    # -- the thread ----------------------------------------------------------------------

    def _run(self) -> None:
        consumer = self._consumer
        try:
            ends = self._assign(consumer)
            pending: Promotion | None = None
            while not self._stop.is_set():
                try:
                    messages = consumer.consume(num_messages=100, timeout=self._poll_s)
                except KafkaException as exc:
                    log.warning("tap: reading %s failed: %s", self.topic, exc)
                    self._stop.wait(_TOPIC_RETRY_S)
                    continue
                for m in messages:
                    if m.error() is not None:
                        continue
                    promotion = self._decode(m.value())
                    if promotion is None:
                        continue
                    if self.caught_up.is_set():
                        self._apply(promotion)
                    else:
                        pending = promotion
                if not self.caught_up.is_set() and self._reached(consumer, ends):
                    if pending is not None:
                        self._apply(pending)
                    self.caught_up.set()
        except Exception:  # never into the service; the primary stays what it was
            log.exception("tap: the control follower stopped")
        finally:
            with contextlib.suppress(Exception):
                consumer.close()

    def _assign(self, consumer: Consumer) -> dict[int, int]:
        """Assign every partition of the topic from the beginning, once it exists.

        Returns the end offset of each partition at start: the history to catch up with.
        """
        while not self._stop.is_set():
            try:
                md = consumer.list_topics(self.topic, timeout=5.0).topics.get(self.topic)
                if md is not None and md.error is None and md.partitions:
                    parts = sorted(md.partitions)
                    ends = {}
                    for p in parts:
                        _, high = consumer.get_watermark_offsets(
                            TopicPartition(self.topic, p), timeout=5.0
                        )
                        ends[p] = high
                    consumer.assign(
                        [TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in parts]
                    )
                    return ends
            except KafkaException as exc:
                log.debug("tap: %s not readable yet: %s", self.topic, exc)
            self._stop.wait(_TOPIC_RETRY_S)
        return {}

    def _reached(self, consumer: Consumer, ends: dict[int, int]) -> bool:
        """Whether the history present at start has been read (an invalid, negative
        position before the first fetch counts as not there yet)."""
        todo = {p: end for p, end in ends.items() if end > 0}
        if not todo:
            return True
        positions = consumer.position([TopicPartition(self.topic, p) for p in todo])
        return all(tp.offset >= todo[tp.partition] for tp in positions)

    def _decode(self, value: bytes | None) -> Promotion | None:
        try:
            rec = self._codec.decode_as("Control", value)
        except Exception as exc:
            log.warning("tap: skipping an undecodable event on %s: %s", self.topic, exc)
            return None
        return Promotion.from_record(rec) if rec["action"] == "PROMOTE" else None

    def _apply(self, promotion: Promotion) -> None:
        changed = promotion.candidate != self._primary
        self._last = promotion
        self._primary = promotion.candidate
        if changed and self._on_promote is not None:
            try:
                self._on_promote(promotion)
            except Exception:
                log.exception("tap: on_promote raised (the primary is %s)", promotion.candidate)
