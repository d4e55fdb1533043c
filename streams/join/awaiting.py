"""Finished joins' answers, kept until their label comes: bounded, logged, evictions counted.

Ground truth can come hours after a request (a sale price, a chargeback), long after its
join finished. For each finished request the joiner keeps only what the losses need, the
primary's and each candidate's answer, keyed by the request_id's digest, until the label
horizon (24 h by default) has passed its first event.

Bounded by evicting, not by spilling to disk. At a steady rate the store holds rate x
horizon requests; past ``budget`` requests per partition the oldest are dropped and
counted (``labels_evicted``), so a label for one of them is counted ``labels_unmatched``:
never silently lost. Why not spill to local disk (RocksDB, as Kafka Streams does): the
store would be a second copy of state next to the changelog, with its own recovery, and
the numbers that matter here are counts and exact sums that a bounded sample of requests
estimates just as well; a team that needs every label of a day at a high rate raises the
budget (memory) or lowers the horizon. What one kept request costs is measured by
``bench/labels.py``.

Kept in insertion order (that of the joins' finishing, close to event-time order), which
is the eviction and expiry order. Answers are kept only once the partition has seen a
label at all (see :class:`streams.joinstate.PartitionState`): a service that never sends
labels pays nothing.

Changelog: per-batch segments (:mod:`streams.join.segments`) under key prefix ``l``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from streams.join.segments import SegmentLog

#: (forget second, (primary model, its answer) or None, ((candidate, answer), ...), labelled)
Kept = tuple[int, Any, tuple[tuple[str, Any], ...], bool]

KEY_AWAITING = b"l"


class AwaitingLabels:
    """Answers of finished joins by request digest, oldest first."""

    def __init__(self, horizon_ms: int, budget: int) -> None:
        if budget < 0:
            raise ValueError(f"budget must be >= 0, got {budget}")
        self.horizon_ms = horizon_ms
        self.budget = budget
        self.items: dict[int, Kept] = {}
        #: digests changed since the last changelog write, in the order they changed
        self._dirty: dict[int, None] = {}
        self.log = SegmentLog(KEY_AWAITING)

    def __len__(self) -> int:
        return len(self.items)

    def get(self, h: int) -> Kept | None:
        return self.items.get(h)

    def keep(self, h: int, first_seen_ms: int, primary: Any, candidates: Any) -> int:
        """Keep a finished join's answers (or, with none, a labelled marker); returns how
        many older ones were evicted to stay within the budget."""
        forget_s = -(-(first_seen_ms + self.horizon_ms) // 1000)
        self.items[h] = (forget_s, primary, tuple(candidates), False)
        self._dirty[h] = None
        return self._evict()

    def mark_labelled(self, h: int, first_seen_ms: int | None = None) -> int:
        """The request got its label: keep only that fact (duplicates are recognised until
        the horizon), in place; with ``first_seen_ms``, a new marker for a join that
        finished with its label already. Returns evictions, as :meth:`keep`."""
        old = self.items.get(h)
        if old is not None:
            forget_s = old[0]
        else:
            assert first_seen_ms is not None
            forget_s = -(-(first_seen_ms + self.horizon_ms) // 1000)
        self.items[h] = (forget_s, None, (), True)
        self._dirty[h] = None
        return self._evict() if old is None else 0

    def _evict(self) -> int:
        n = 0
        items = self.items
        while len(items) > self.budget:
            h = next(iter(items))
            labelled = items.pop(h)[3]
            self._dirty[h] = None
            n += not labelled  # a labelled marker lost is no label lost
        return n

    def forget(self, wm: int) -> None:
        """Drop what the watermark has left the horizon behind (front of the order)."""
        items = self.items
        limit = wm // 1000
        while items:
            h = next(iter(items))
            if items[h][0] > limit:
                return
            del items[h]
            self._dirty[h] = None

    # -- changelog ---------------------------------------------------------------------

    def changes(self) -> Iterator[tuple[bytes, bytes | None]]:
        dirty = self._dirty
        if not dirty:
            return
        if self.log.wants_base():
            yield from self.log.base(dict(self.items))
        else:
            items = self.items
            put = {h: items[h] for h in dirty if h in items}
            gone = [h for h in dirty if h not in items]
            yield from self.log.delta(put, gone)
        dirty.clear()

    def restore_segment(self, rest: bytes, value: bytes | None) -> None:
        seg = self.log.restore(rest, value)
        if seg is None:
            return
        if seg.starts_base:
            self.items.clear()
        for h, kept in seg.put.items():
            f, prim, cands, labelled = kept
            self.items[int(h)] = (f, prim, tuple(tuple(c) for c in cands), labelled)
        for h in seg.gone:
            self.items.pop(int(h), None)
