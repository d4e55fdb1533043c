"""``understudy alerts``: the alert transitions on ``<prefix>.alerts``, in the terminal.

The topic is compacted and keyed ``rule|candidate|feature``, so reading it from the start
shows the latest state of every alert, then every transition as it comes. Only committed
messages are read (the evaluator publishes in transactions): an alert of an aborted
attempt is never shown.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, TextIO

from confluent_kafka import Consumer, KafkaError, TopicPartition

from streams.config import Config
from streams.errors import BrokerError, SchemaError
from streams.kafka import Topics, client_config
from streams.schemas import Codec, default_codec

__all__ = ["follow_alerts", "format_alert", "latest_by_alert"]

AlertKey = tuple[str, str, str]


def latest_by_alert(alerts: list[dict[str, Any]]) -> dict[AlertKey, dict[str, Any]]:
    """Each alert's latest transition, by (rule, candidate, feature), keys in first-seen
    order: what a subscriber's compacted view of ``<prefix>.alerts`` holds."""
    return {(a["rule"], a["candidate"], a["feature"]): a for a in alerts}


def format_alert(a: dict[str, Any]) -> str:
    """One line a person reads: when, state, severity, what, and the value."""
    when = time.strftime("%H:%M:%S", time.gmtime(int(a["window_end"]) / 1000))
    feature = f" [{a['feature']}]" if a["feature"] else ""
    return (
        f"{when}Z {a['state']:<8} {a['severity']:<8} {a['rule']} {a['candidate']}{feature}: "
        f"{a['metric']} {a['value']:.4g} {a['comparison']} {a['threshold']:.4g}"
        f" ({a['consecutive']} windows) {a['message']}"
    )


def follow_alerts(
    cfg: Config,
    *,
    out: TextIO,
    as_json: bool = False,
    once: bool = False,
    stop: threading.Event | None = None,
    idle_exit_s: float | None = None,
    codec: Codec | None = None,
    on_alert: Callable[[dict[str, Any]], None] | None = None,
) -> int:
    """Print every alert on the topic, then follow it; returns how many were printed.

    ``once``: stop at the end of what is there now. ``idle_exit_s``: stop after that long
    without a new alert (tests, scripts).
    """
    codec = codec or default_codec()
    topic = Topics(cfg.prefix).alerts
    consumer = Consumer(
        {
            **client_config(cfg),
            "group.id": f"{cfg.prefix}.alerts-view-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
        }
    )
    printed = 0
    try:
        md = consumer.list_topics(topic, timeout=10)
        meta = md.topics.get(topic)
        if meta is None or meta.error is not None or not meta.partitions:
            raise BrokerError(f"no topic {topic}: run `understudy topics create`")
        parts = sorted(meta.partitions)
        consumer.assign([TopicPartition(topic, p, 0) for p in parts])  # from the beginning
        at_end: set[int] = set()
        last = time.monotonic()
        while not (stop is not None and stop.is_set()):
            msgs = consumer.consume(num_messages=500, timeout=0.5)
            for msg in msgs:
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        at_end.add(msg.partition() or 0)
                        continue
                    if err.fatal():
                        raise BrokerError(f"cannot read {topic}: {err}")
                    continue
                value = msg.value()
                if value is None:
                    continue  # a tombstone: nothing to show
                try:
                    alert = codec.decode_as("Alert", value)
                except SchemaError as exc:
                    out.write(f"(undecodable message at offset {msg.offset()}: {exc})\n")
                    continue
                printed += 1
                last = time.monotonic()
                if on_alert is not None:
                    on_alert(alert)
                if as_json:
                    out.write(json.dumps(alert, sort_keys=True, default=str) + "\n")
                else:
                    out.write(format_alert(alert) + "\n")
                out.flush()
            if once and len(at_end) == len(parts):
                break
            if idle_exit_s is not None and time.monotonic() - last >= idle_exit_s:
                break
    finally:
        consumer.close()
    return printed
