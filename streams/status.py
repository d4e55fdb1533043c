"""``understudy status``: where a deployment stands, read from what it publishes.

Why: an operator, or a script in a deploy pipeline, wants one answer without starting a
demo or writing a consumer: each candidate's latest cumulative figures and verdict, the
alerts firing now, and whether the shadow worker and the joiner keep up. Everything comes
from the public topics (``<prefix>.metrics``, ``.alerts``, ``.verdicts``, ``.control``),
read to their end as any subscriber would (committed records only; of the metrics, the
last :data:`METRICS_TAIL` records of each partition), and from the stages' committed
offsets; ``status`` joins no stage's group and commits nothing, so it can run
anywhere, any time, next to a live deployment.

Lag is per consumer group: the records on its input topics past its committed offsets
(``None`` when the group has committed nothing yet: not started, or never got through a
batch). Growing lag means the stage falls behind; a fixed, small one is a batch in flight.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, TextIO

from confluent_kafka import OFFSET_BEGINNING, TopicPartition

from streams.alerts.follow import format_alert, latest_by_alert
from streams.config import Config
from streams.errors import BrokerError, ConfigError
from streams.kafka import Topics, committed_reader
from streams.view import MetricsView

__all__ = ["Status", "print_status", "read_status"]

#: Records read back per partition of ``<prefix>.metrics`` (the others are compacted or
#: small, and read whole): a long-lived deployment's metrics topic holds a snapshot per
#: candidate per window since it began, and only the latest ones are wanted. 10,000 is
#: hours of 1 s windows for a few candidates.
METRICS_TAIL = 10_000

#: The stages' consumer groups and the topics each reads (the worker's default group).
GROUPS = {"worker": ("requests",), "joiner": ("requests", "predictions", "labels")}


@dataclass
class Status:
    """One reading of a deployment."""

    prefix: str
    view: MetricsView
    #: records each stage's group has still to read; None: the group has no commits
    lag: dict[str, int | None]
    #: whether every topic was read to its end within the timeout
    complete: bool

    def firing(self) -> list[dict[str, Any]]:
        """The alerts whose latest transition is FIRING, by rule, candidate and feature."""
        return [a for a in latest_by_alert(self.view.alerts).values() if a["state"] == "FIRING"]

    def as_json(self) -> dict[str, Any]:
        return {
            "prefix": self.prefix,
            "complete": self.complete,
            "lag": self.lag,
            "candidates": {c: self.view.final(c) for c in sorted(self.view.cumulative)},
            "firing": self.firing(),
        }


def read_status(cfg: Config, timeout: float = 30.0, history: bool = False) -> Status:
    """Read the published topics to their end (at most ``timeout`` s) and the groups' lag;
    with ``history``, the view keeps every window snapshot and verdict read.

    Raises :class:`ConfigError` when ``<prefix>.metrics`` does not exist (a wrong prefix,
    or topics never created), :class:`BrokerError` when Kafka does not answer.
    """
    topics = Topics(cfg.prefix)
    view = MetricsView(cfg, role="status", follow=False, history=history)
    try:
        complete = _read_to_end(view, topics, timeout)
        lag = {
            stage: group_lag(cfg, f"{cfg.prefix}.{stage}", names) for stage, names in GROUPS.items()
        }
    finally:
        view.close()
    return Status(cfg.prefix, view, lag, complete)


def _read_to_end(view: MetricsView, topics: Topics, timeout: float) -> bool:
    pending = {(tp.topic, tp.partition) for tp in assign_tail(view, topics)}
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        view.poll(0.5)
        pending -= view.at_end
    return not pending


def assign_tail(view: MetricsView, topics: Topics) -> list[TopicPartition]:
    """Assign ``view`` the deployment's public topics: each from its start, but for the
    metrics, from the last :data:`METRICS_TAIL` records of each partition.

    Raises :class:`ConfigError` without ``<prefix>.metrics``, :class:`BrokerError` when
    Kafka does not answer.
    """
    consumer = view.consumer
    try:
        md = consumer.list_topics(timeout=10)
    except Exception as exc:
        raise BrokerError(f"cannot read the topics' metadata: {exc}") from exc
    names = [topics.metrics, topics.alerts, topics.verdicts, topics.control]
    if topics.metrics not in md.topics or md.topics[topics.metrics].error is not None:
        raise ConfigError(
            f"no topic {topics.metrics}: is the prefix right? (`understudy topics create` "
            "makes a deployment's topics, and the evaluator publishes there)"
        )
    tps = []
    for name in names:
        if name not in md.topics or md.topics[name].error is not None:
            continue
        for p in md.topics[name].partitions:
            start = OFFSET_BEGINNING
            if name == topics.metrics:
                low, high = consumer.get_watermark_offsets(TopicPartition(name, p), timeout=10)
                start = max(low, high - METRICS_TAIL)
            tps.append(TopicPartition(name, p, start))
    consumer.assign(tps)
    return tps


def group_lag(cfg: Config, group: str, streams: tuple[str, ...]) -> int | None:
    """Records on ``<prefix>.<stream>`` past ``group``'s committed offsets, over every
    partition it has committed; None when it has committed none."""
    topics = Topics(cfg.prefix)
    reader = committed_reader(cfg, group)
    try:
        md = reader.list_topics(timeout=10)
        tps = [
            TopicPartition(name, p)
            for name in (getattr(topics, s) for s in streams)
            if name in md.topics and md.topics[name].error is None
            for p in md.topics[name].partitions
        ]
        if not tps:
            return None
        committed = [tp for tp in reader.committed(tps, timeout=10) if tp.offset >= 0]
        if not committed:
            return None
        lag = 0
        for tp in committed:
            _, high = reader.get_watermark_offsets(tp, timeout=10)
            lag += max(0, high - tp.offset)
        return lag
    except Exception as exc:
        raise BrokerError(f"cannot read group {group}'s committed offsets: {exc}") from exc
    finally:
        reader.close()


def print_status(status: Status, out: TextIO, as_json: bool = False) -> None:
    """The table the demo shows, then lag and the alerts firing; or one JSON object."""
    if as_json:
        out.write(json.dumps(status.as_json(), default=str) + "\n")
        return
    view = status.view
    if view.cumulative:
        out.write(view.table(recent_alerts=False) + "\n")
    else:
        out.write(f"no metric snapshots on {status.prefix}.metrics yet\n")
    lag = ", ".join(f"{stage} {'-' if n is None else n}" for stage, n in status.lag.items())
    out.write(f"lag (records not yet committed by each stage's group): {lag}\n")
    firing = status.firing()
    out.write(f"alerts firing: {len(firing)}\n")
    for a in firing:
        out.write("  " + format_alert(a) + "\n")
    if not status.complete:
        out.write("(the topics were not all read to their end within the timeout)\n")
