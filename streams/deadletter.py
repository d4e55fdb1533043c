"""The dead-letter record every stage writes, bounded so that it always fits in Kafka.

A dead letter copies the message it gives up on. Copied whole, a message near Kafka's size
limit (1 MB by default) comes out *larger* than it went in, the produce fails and the stage
stops for good on a message it was only trying to set aside. So the copy keeps at most
:data:`MAX_COPY` bytes of key and of value, and the reason says what was cut.
"""

from __future__ import annotations

import time
from typing import Any

from confluent_kafka import Message

MAX_COPY = 256 * 1024
"""Bytes of the original key, and of the value, kept in a dead letter."""
MAX_ID_CHARS = 65_536
"""Longest request_id or model_id a stage accepts: ids are echoed into every prediction,
partial and ledger, so an unbounded one would break those (a UUID is 36)."""
MAX_REASON = 2_000
"""Characters of the reason kept (a reason may quote the bad input)."""


def clip(data: bytes | None, limit: int = MAX_COPY) -> bytes | None:
    return data if data is None or len(data) <= limit else data[:limit]


def dead_letter_record(
    stage: str,
    reason: str,
    *,
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes | None,
    now: int,
) -> dict[str, Any]:
    """A DeadLetter record; key and value cut to :data:`MAX_COPY` bytes, and said so.

    >>> rec = dead_letter_record("joiner", "bad", topic="t", partition=0, offset=7,
    ...                          key=b"k", value=b"x" * (MAX_COPY + 1), now=0)
    >>> len(rec["value"]) == MAX_COPY, rec["reason"]
    (True, 'bad (value cut from 262145 to 262144 bytes)')
    """
    cut = [
        f"{name} cut from {len(data)} to {MAX_COPY} bytes"
        for name, data in (("key", key), ("value", value))
        if data is not None and len(data) > MAX_COPY
    ]
    if len(reason) > MAX_REASON:
        reason = reason[:MAX_REASON] + "..."
    if cut:
        reason = f"{reason} ({', '.join(cut)})"
    return {
        "stage": stage,
        "reason": reason,
        "source_topic": topic,
        "source_partition": partition,
        "source_offset": offset,
        "key": clip(key),
        "value": clip(value),
        "time": now,
    }


def dead_letter_of(stage: str, msg: Message, reason: str) -> dict[str, Any]:
    """The DeadLetter record of one consumed message (the worker's and the joiner's)."""
    return dead_letter_record(
        stage,
        reason,
        topic=msg.topic() or "",
        partition=msg.partition() or 0,
        offset=msg.offset() or 0,
        key=msg.key(),
        value=msg.value(),
        now=int(time.time() * 1000),
    )
