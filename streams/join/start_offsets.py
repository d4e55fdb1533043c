"""Where the joiner started reading each partition: the idleness check's lazy lookup.

A partition the joiner has consumed nothing from since its assignment has no position, and
is read to its end when its committed offset equals its high watermark (a restarted joiner
with nothing left to read must still close its windows by idleness). That committed offset
is asked of the group coordinator, and the question can hang: while a previous incarnation's
transaction holds offsets of the group (killed mid-transaction, until its
``transaction.timeout.ms``), a read_committed lookup waits. Asked for every partition and
stream on every idle tick with a 5 s timeout, it stalled a joiner restarted after a broker
outage for minutes (a CI failure). So: an answer is kept for the assignment, and after a
failed lookup none is tried again for a back-off period; until then the answer is "not
known", which the idleness check reads as "not caught up".
"""

from __future__ import annotations

import time
from collections.abc import Callable

from confluent_kafka import KafkaException, TopicPartition

__all__ = ["StartOffsets"]


class StartOffsets:
    """Committed offsets of assigned partitions, looked up once each, never in a storm.

    >>> calls = []
    >>> def lookup(tp):
    ...     calls.append(tp.partition)
    ...     return -1001  # no commit yet: start at the log's beginning
    >>> starts = StartOffsets(lookup, backoff_s=1.0)
    >>> starts.get(TopicPartition("t", 0), low=7), starts.get(TopicPartition("t", 0), low=7)
    (7, 7)
    >>> calls
    [0]
    """

    def __init__(
        self,
        lookup: Callable[[TopicPartition], int],
        backoff_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._lookup = lookup
        self._backoff_s = backoff_s
        self._clock = clock
        self._known: dict[tuple[str, int], int] = {}
        self._retry_at = 0.0

    def get(self, tp: TopicPartition, low: int) -> int | None:
        """The offset reading of ``tp`` started from, or None while it cannot be known.

        ``low`` is the partition's log start, where a group without a commit begins.
        """
        key = (tp.topic, tp.partition)
        start = self._known.get(key)
        if start is not None:
            return start
        now = self._clock()
        if now < self._retry_at:
            return None
        try:
            committed = self._lookup(tp)
        except KafkaException:
            self._retry_at = now + self._backoff_s
            return None
        start = committed if committed >= 0 else low
        self._known[key] = start
        return start

    def forget(self, tp: TopicPartition) -> None:
        """``tp`` was revoked: a later assignment starts from its commit then."""
        self._known.pop((tp.topic, tp.partition), None)
