"""The label side of one partition's join: where each label goes, and what it is counted.

Ground truth (a sale price, a chargeback) comes on its own topic and at its own pace:
while its request's join is open, hours after it finished (its answers then wait in
:class:`~streams.join.awaiting.AwaitingLabels`), before any answer, or never. Labels
never move the watermark, so nothing here decides when anything ends: the partition state
(:class:`streams.joinstate.PartitionState`) checks a label, hands it here, and tells
:meth:`Labels.finish` when a join ends. Apart from the pairs it scores
(:mod:`streams.join.labelling`), every label is counted by what became of it, so that
none is lost silently: ``labels``, ``label_duplicates``, ``labels_early`` (it opened the
join), ``labels_unmatched`` (nothing to score it against), ``labels_evicted`` (answers
dropped from the awaiting store for its budget) and ``labels_other_primary`` (pairs a
former primary answered, around a promotion).

Kept apart from the join table and the windows it writes into because it is the one part
a service may not use at all: until a partition sees its first label it keeps no answers
(``seen``), and a service that never sends labels pays nothing.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import Any

from streams.join.awaiting import AwaitingLabels
from streams.join.finished import digest
from streams.join.labelling import answer_loss, score_pairs
from streams.join.table import Answer, Entry, JoinTable, Truth
from streams.join.windows import Windows
from streams.metrics.partial import SHARED


def refuse_truth(value: Any, label: Any) -> str | None:
    """Why a label's truth cannot be scored (a dead letter), or None."""
    if value is None and label is None:
        return "label has neither a value nor a class"
    if value is not None and not math.isfinite(value):
        return f"label value {value!r} is not finite"
    return None


class Labels:
    """Labels joined to open joins and to answers kept after them; see the module docstring."""

    def __init__(self, table: JoinTable, windows: Windows, horizon_ms: int, budget: int) -> None:
        self.table = table
        self.windows = windows
        #: finished joins' answers awaiting their labels, once this partition has seen one
        self.awaiting = AwaitingLabels(horizon_ms, budget)
        #: a label has come: from then on finished joins keep their answers
        self.seen = False
        #: ``seen`` changed since the last changelog write (it is in the partition's meta)
        self.meta_dirty = False

    def on_label(self, rid: str, truth: Truth, primary_id: str) -> bool:
        """Apply a label that passed the checks; True when it opened a join (before any
        answer, as an answer before its request does), so the caller keeps the cap."""
        t = truth[2]
        w, table = self.windows, self.table
        if not self.seen:
            self.seen = True
            self.meta_dirty = True
        e = table.live.get(rid)
        if e is not None:
            if e.label is not None:
                w.count(SHARED, t, "label_duplicates")
            else:
                e.label = truth
                table.dirty.add(rid)
                w.count(SHARED, t, "labels")
                self.score(truth, e.pm, e.prim, e.cands.items(), primary_id)
            return False
        h = digest(rid)
        kept = self.awaiting.get(h)
        if kept is not None and kept[3]:
            w.count(SHARED, t, "label_duplicates")
        elif kept is not None:
            w.count(SHARED, t, "labels")
            pm, prim = kept[1] if kept[1] is not None else (None, None)
            scored, other_primary = self.score(truth, pm, prim, kept[2], primary_id)
            if not scored and not other_primary:
                w.count(SHARED, t, "labels_unmatched")
            self.awaiting.mark_labelled(h)
        elif table.done.get(h) is not None:  # finished, its answers not kept
            w.count(SHARED, t, "labels")
            w.count(SHARED, t, "labels_unmatched")
            self._evicted(t, self.awaiting.mark_labelled(h, t))
        else:  # before any prediction (or for a request never seen): open its join
            e = table.open(rid, t, h)
            e.label = truth
            w.count(SHARED, t, "labels")
            w.count(SHARED, t, "labels_early")
            return True
        return False

    def score(
        self,
        truth: Truth,
        pm: str | None,
        prim: Answer | None,
        cands: Iterable[tuple[str, Answer]],
        primary_id: str,
    ) -> tuple[int, bool]:
        """Score the pairs against the primary's answer: (pairs scored, whether another
        model than ``primary_id``, the partition's primary, gave it).

        A comparison is with the primary of its partial, so pairs a former primary
        answered (around a promotion) are counted ``labels_other_primary``, not scored.
        """
        if pm is not None and pm != primary_id:
            n = sum(1 for _ in cands)
            if n:
                self.windows.count(SHARED, truth[2], "labels_other_primary", n)
            return 0, True
        return score_pairs(self.windows, truth, prim, cands), False

    def finish(self, e: Entry, at: int) -> None:
        """A join ends at ``at``: keep its answers for a label to come, or settle the label
        it had."""
        truth = e.label
        if truth is not None:
            scored = answer_loss(truth, e.prim) is not None and any(
                answer_loss(truth, a) is not None for a in e.cands.values()
            )
            if not scored:
                self.windows.count(SHARED, at, "labels_unmatched")
        if not self.seen or self.awaiting.horizon_ms <= 0:
            return
        first_seen = e.deadline - self.table.ttl_ms
        if truth is not None:
            self._evicted(at, self.awaiting.mark_labelled(e.h, first_seen))
        elif e.prim is not None or e.cands:
            prim = None if e.prim is None else (e.pm, e.prim)
            self._evicted(at, self.awaiting.keep(e.h, first_seen, prim, tuple(e.cands.items())))

    def _evicted(self, t: int, n: int) -> None:
        if n:
            self.windows.count(SHARED, t, "labels_evicted", n)

    def forget(self, wm: int) -> None:
        """Kept answers the watermark has left the label horizon behind are dropped."""
        self.awaiting.forget(wm)

    # -- changelog ---------------------------------------------------------------------

    def changes(self) -> Iterator[tuple[bytes, bytes | None]]:
        """The awaiting store's segments since the last call (``seen`` is in the meta)."""
        yield from self.awaiting.changes()

    def restore_segment(self, rest: bytes, value: bytes | None) -> None:
        self.awaiting.restore_segment(rest, value)

    def dump_meta(self) -> dict[str, Any]:
        return {"labels_seen": self.seen}

    def load_meta(self, meta: dict[str, Any]) -> None:
        """The meta's ``labels_seen``. Metas of earlier releases also carry ``label_seq``,
        the awaiting store's segment sequence: it is not read, since the segment keys
        carry it (:meth:`streams.join.segments.SegmentLog.restore`)."""
        self.seen = bool(meta.get("labels_seen", False))
