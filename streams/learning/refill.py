"""After a restart: the requests scored since the learner's checkpoint, back into its store.

A checkpoint lags the worker: between two of them the group commits the batches it scored
(their predictions are out), so a restarted worker does not score those requests again,
and without their features their labels (read again from the checkpoint's label offsets)
would find nothing to pair with and end ``unmatched``. So the requests between the
checkpoint's ``requests_next`` and the group's committed offset are read back from
``<prefix>.requests`` (at most the store's ``cap`` of them, the newest) and added to the
store as if just scored: each of their labels is then learned once, by the restored model.

Only what the worker itself scored comes back: a message it dead-lettered (not a Request,
no request_id, no key) has no features to learn from and is skipped here as well.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from confluent_kafka import Consumer, KafkaException

from streams.config import Config
from streams.errors import SchemaError, UnderstudyError
from streams.kafka import Topics, client_config, read_range
from streams.learning.store import FeatureStore
from streams.learning.timeorder import HeldPairs
from streams.schemas import Record

__all__ = ["REFILL_S", "refill"]

log = logging.getLogger(__name__)

#: Bound on one partition's refill.
REFILL_S = 30.0


def refill(
    cfg: Config,
    model_id: str,
    decode: Callable[[str, bytes | None], Record],
    store: FeatureStore,
    held: HeldPairs,
    partition: int,
    start: int,
    end: int,
) -> tuple[int, int | None]:
    """Requests ``[start, end)`` of a partition, scored before a restart (their answers are
    out), back into ``store``; a pair their features complete (an early label) goes to
    ``held``. Returns how many were added, and the offset after the last one read (None:
    none read), the partition's new ``requests_next``.

    A failure part way is logged, not raised: what was read stays, the rest of those
    requests' labels end unmatched."""
    reader = Consumer(
        client_config(
            cfg,
            **{
                "group.id": f"{cfg.prefix}.learner.refill",
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
            },
        )
    )
    added = 0
    last: int | None = None
    try:
        for msg in read_range(reader, Topics(cfg.prefix).requests, partition, start, end, REFILL_S):
            offset = msg.offset()
            try:
                r = decode("Request", msg.value())
            except SchemaError:
                continue  # the worker dead-lettered it: it has no features to learn from
            if not r["request_id"] or not msg.key():
                continue
            x = {**r["numeric_features"], **r["categorical_features"]}
            pair = store.add(partition, r["request_id"], r["event_time"], x)
            if pair is not None:
                held.hold(*pair)
            added += 1
            if offset is not None:
                last = offset + 1
    except (UnderstudyError, KafkaException) as exc:
        log.warning(
            "learner %s: refilling partition %d stopped after %d requests: %s",
            model_id,
            partition,
            added,
            exc,
        )
    finally:
        reader.close()
    log.warning(
        "learner %s: partition %d refilled with %d requests scored before the restart "
        "(offsets %d-%d)",
        model_id,
        partition,
        added,
        start,
        end - 1,
    )
    return added, last
