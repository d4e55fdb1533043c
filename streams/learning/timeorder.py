"""Time order for an online learner: which labels a model may learn from yet.

A worker catching up on a backlog reads one partition ahead of another. A label learned
from the head of one partition would reach the model before it answers older requests of
the others: something a model running live could not have known, and a progressive
validation that flatters it. So a matched (features, label) pair is *held* until every
partition that still has requests to read has scored past the label's event time
(:func:`frontier`), and only then released to be learned.

Plain code on plain numbers, so the rule is unit-tested without Kafka
(tests/unit/test_learning.py): :class:`ScoringProgress` keeps each partition's position
from what :class:`streams.learning.learner.OnlineLearner` tells it (assignments, where
scoring resumes, the batches scored), and is handed the high watermarks, which only the
worker's consumer knows, when the frontier is asked for.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["HeldPairs", "PartitionProgress", "ScoringProgress", "frontier"]


@dataclass(frozen=True)
class PartitionProgress:
    """Where the worker stands on one assigned partition of the requests topic."""

    #: offset of the next message to read: the consumer's position, past transaction
    #: markers and aborted records (None: not known yet)
    next_offset: int | None
    #: the partition's high watermark from the last fetch (-1: not known)
    high: int
    #: when (monotonic seconds) the worker last got a message of it
    active_at: float
    #: event time of the newest request scored on it (None: none yet)
    scored_ms: int | None


def frontier(
    partitions: Iterable[PartitionProgress],
    idle_before: float,
    settled_before: float = math.inf,
) -> float:
    """The event time every partition with requests still to read has scored past.

    A partition with messages past its position (the consumer's, which librdkafka moves
    past transaction markers and aborted records) holds learning back at what it has
    scored, however long ago it gave the worker a message: a worker busy with other
    partitions, or one that stalled, has not read them yet. A partition holds nothing back
    when its position is unknown, when it is read to its end and gave the worker nothing
    since ``settled_before``, or when its end is unknown (no fetch yet) and it gave the
    worker nothing since ``idle_before`` (idleness, as the joiner's watermarks have it).
    ``inf`` when none holds anything back.

    Why "settled": the high watermark is the one of the consumer's last fetch, so "read to
    its end" can be stale by a fetch, and a request produced before a label can reach Kafka
    after it (the service's tap and its label source are separate producers). Under live
    traffic a partition that keeps getting requests therefore holds learning back until it
    is scored past the label; one quiet a little longer than that does not.

    Why idleness only when the end is unknown: a partition that gave nothing for a while
    but has requests past its position is behind, not quiet (a backlog read one partition
    at a time, a worker that stalled); counted idle, its requests met a model that had
    learned from later labels.
    """
    limit = math.inf
    for p in partitions:
        if p.next_offset is None:
            continue
        if p.high < 0:
            if p.active_at < idle_before:
                continue
        elif p.high <= p.next_offset and p.active_at < settled_before:
            continue
        limit = min(limit, -math.inf if p.scored_ms is None else p.scored_ms)
    return limit


class ScoringProgress:
    """Where the worker stands on each partition it was assigned: the
    :class:`PartitionProgress` that :func:`frontier` reads, but for the high watermark."""

    def __init__(self) -> None:
        #: per partition: the offset after the last message consumed (None: not known,
        #: never holds learning back), and the latest event time scored there
        self._next: dict[int, int | None] = {}
        self._scored_ms: dict[int, int] = {}
        #: per partition: monotonic time it last gave the worker a message (or was
        #: assigned); idle past ``idle_before``, it holds nothing back
        self._active_at: dict[int, float] = {}

    def assigned(self, partition: int, now: float) -> None:
        """The partition was (re)assigned at ``now``: it counts as active from then."""
        self._active_at[partition] = now

    def resumes_at(self, partition: int, offset: int) -> None:
        """Scoring of the partition goes on from ``offset`` (its committed position)."""
        self._next[partition] = offset

    def scored(
        self,
        consumed: dict[int, int],
        partitions: Sequence[int],
        event_times: Sequence[int],
        now: float,
    ) -> None:
        """A batch was scored: per partition the offset after its last message, and each
        request's partition and event time."""
        self._next.update(consumed)
        for p in consumed:
            self._active_at[p] = now
        scored_ms = self._scored_ms
        for p, t in zip(partitions, event_times, strict=True):
            if t > scored_ms.get(p, -1):
                scored_ms[p] = t

    def forget(self, partition: int) -> None:
        """The partition is gone for good (another worker scores it)."""
        self._next.pop(partition, None)
        self._scored_ms.pop(partition, None)
        self._active_at.pop(partition, None)

    def frontier(
        self,
        partitions: Iterable[int],
        ends: Callable[[int], tuple[int, int]],
        idle_before: float,
        settled_before: float = math.inf,
    ) -> float:
        """:func:`frontier` of ``partitions``; ``ends(p)``: the consumer's position on a
        partition and its high watermark (each -1 or less when not known), asked only of
        those whose position is known here. The consumer's position is the one read: it
        passes transaction markers and aborted records, which no message is returned for."""
        nxt, active_at, scored_ms = self._next, self._active_at, self._scored_ms

        def progress(p: int) -> PartitionProgress:
            offset = nxt.get(p)
            high = -1
            if offset is not None:
                position, high = ends(p)
                offset = max(offset, position)
            return PartitionProgress(offset, high, active_at.get(p, 0.0), scored_ms.get(p))

        return frontier(map(progress, partitions), idle_before, settled_before)


class HeldPairs:
    """Matched pairs waiting for the frontier, oldest label first."""

    def __init__(self) -> None:
        self._heap: list[tuple[int, int, Any, Any]] = []
        self._seq = itertools.count()  # ties keep arrival order, and features never compare

    def __len__(self) -> int:
        return len(self._heap)

    def hold(self, x: Any, y: Any, label_ms: int) -> None:
        heapq.heappush(self._heap, (label_ms, next(self._seq), x, y))

    def release(self, limit: float) -> list[tuple[Any, Any]]:
        """The pairs whose label's event time is at most ``limit``, in time order."""
        out = []
        heap = self._heap
        while heap and heap[0][0] <= limit:
            _, _, x, y = heapq.heappop(heap)
            out.append((x, y))
        return out

    def items(self) -> list[tuple[int, Any, Any]]:
        """(label time, features, label) of every pair held, for a checkpoint."""
        return [(ms, x, y) for ms, _, x, y in self._heap]
