"""Slice values of one accumulator, buffered flat and folded in a few numpy passes.

Each event adds its value once, with the id of its context (the tuple of its slice names,
numbered in first-seen order), however many slices that context names: one append per
event instead of one per slice. Folding spreads the values out to their slices with
numpy (each value repeated once per name of its context) and folds every slice's sums
and sketches in one vectorised pass per kind of value.

Why not a list per context, merged per slice in Python: with 3 context keys and ~100
contexts per batch, that was 5 list concatenations per (context, slice), ~40% of the
statistics' fold time (``bench/statistics.py``, cProfile).

The slices are admitted in the order the per-context lists met them (contexts in
first-seen order, names in each context's order), which is the order a capped key admits
values in; the numbers do not depend on how the values are buffered.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt

from streams.metrics.partial import PartialStats
from streams.metrics.slices import SliceStats

Ids = npt.NDArray[np.intp]


class SliceColumns:
    """Values by context not yet folded: flat value lists, each with its context ids."""

    __slots__ = (
        "cls_c",
        "cls_ids",
        "cls_p",
        "ids",
        "out",
        "out_ids",
        "reg_c",
        "reg_ids",
        "reg_p",
        "req_ids",
    )

    def __init__(self) -> None:
        #: context (its slice names) -> id, in first-seen order
        self.ids: dict[tuple[str, ...], int] = {}
        self.req_ids: list[int] = []
        self.out: list[float] = []
        self.out_ids: list[int] = []
        self.reg_p: list[float] = []
        self.reg_c: list[float] = []
        self.reg_ids: list[int] = []
        self.cls_p: list[str] = []
        self.cls_c: list[str] = []
        self.cls_ids: list[int] = []

    def __bool__(self) -> bool:
        return bool(self.ids)

    def _id(self, ctx: tuple[str, ...]) -> int:
        i = self.ids.get(ctx)
        if i is None:
            i = self.ids[ctx] = len(self.ids)
        return i

    def request(self, ctx: tuple[str, ...]) -> None:
        self.req_ids.append(self._id(ctx))

    def output(self, ctx: tuple[str, ...], value: float) -> None:
        self.out.append(value)
        self.out_ids.append(self._id(ctx))

    def regression(self, ctx: tuple[str, ...], primary: float, candidate: float) -> None:
        self.reg_p.append(primary)
        self.reg_c.append(candidate)
        self.reg_ids.append(self._id(ctx))

    def classification(self, ctx: tuple[str, ...], primary: str, candidate: str) -> None:
        self.cls_p.append(primary)
        self.cls_c.append(candidate)
        self.cls_ids.append(self._id(ctx))

    def fold(self, s: PartialStats, *, primary: bool) -> None:
        """Fold every buffered value into the slices of ``s`` (then the buffer is spent)."""
        if not self.ids:
            return
        spread = _Spread(self.ids)
        req = spread.names(self.req_ids)[1]
        out_rows, out_names = spread.names(self.out_ids)
        reg_rows, reg_names = spread.names(self.reg_ids)
        cls_rows, cls_names = spread.names(self.cls_ids)
        k = len(spread.order)
        sizes = [
            np.bincount(v, minlength=k) for v in (req, out_names, reg_names, cls_names) if v.size
        ]
        size = np.sum(sizes, axis=0).tolist()
        req_n = np.bincount(req, minlength=k).tolist()
        admitted: list[SliceStats] = []
        slot = np.full(k, -1, dtype=np.intp)
        for j, name in enumerate(spread.order):
            st = s.slices.get(name, size[j])
            if st is None:
                continue  # its key is full: counted in the overflow
            st.requests += req_n[j]
            slot[j] = len(admitted)
            admitted.append(st)
        add_regression = SliceStats.add_regression_segments
        add_outputs = functools.partial(SliceStats.add_outputs_segments, primary=primary)
        _fold_floats(admitted, slot, reg_names, reg_rows, (self.reg_p, self.reg_c), add_regression)
        _fold_floats(admitted, slot, out_names, out_rows, (self.out,), add_outputs)
        if cls_rows.size:
            seg, rows, used = _admitted(slot, cls_names, cls_rows)
            order = np.argsort(seg, kind="stable")
            bounds = np.searchsorted(seg[order], np.arange(len(used) + 1))
            ordered = rows[order].tolist()
            for i, st_ix in enumerate(used):
                mine = ordered[bounds[i] : bounds[i + 1]]
                admitted[st_ix].add_classification(
                    [self.cls_p[r] for r in mine], [self.cls_c[r] for r in mine]
                )


class _Spread:
    """The slice names of a batch's contexts, and how a value's context spreads to them."""

    def __init__(self, ids: dict[tuple[str, ...], int]) -> None:
        index: dict[str, int] = {}
        flat: list[int] = []
        lens: list[int] = []
        for ctx in ids:  # in id order: a dict keeps insertion order
            lens.append(len(ctx))
            for name in ctx:
                j = index.get(name)
                if j is None:
                    j = index[name] = len(index)
                flat.append(j)
        #: slice names in first-seen order
        self.order = list(index)
        self._flat = np.asarray(flat, dtype=np.intp)
        self._lens = np.asarray(lens, dtype=np.intp)
        self._starts = np.cumsum(self._lens) - self._lens

    def names(self, ctx_ids: list[int]) -> tuple[Ids, Ids]:
        """(row, slice-name index) for every value and every slice its context names."""
        cid = np.asarray(ctx_ids, dtype=np.intp)
        k = self._lens[cid]
        total = int(k.sum())
        rows = np.repeat(np.arange(cid.size, dtype=np.intp), k)
        first = np.repeat(self._starts[cid] - (np.cumsum(k) - k), k)
        return rows, self._flat[first + np.arange(total, dtype=np.intp)]


def _fold_floats(
    admitted: list[SliceStats],
    slot: Ids,
    names: Ids,
    rows: Ids,
    columns: Sequence[list[float]],
    add: Callable[..., None],
) -> None:
    """``add(slices, *values, segments)`` of the values whose slice was admitted: each
    column's values at those rows, as float64, one segment per admitted slice."""
    if not rows.size:
        return
    seg, rows, used = _admitted(slot, names, rows)
    if rows.size:
        values = [np.asarray(c, dtype=np.float64)[rows] for c in columns]
        add([admitted[i] for i in used], *values, seg)


def _admitted(slot: Ids, names: Ids, rows: Ids) -> tuple[Ids, Ids, list[int]]:
    """The values whose slice was admitted: (segment, row, admitted index per segment),
    segments numbered 0.. in admitted order over the admitted slices that have values."""
    ix = slot[names]
    keep = ix >= 0
    ix, rows = ix[keep], rows[keep]
    if not ix.size:
        return ix, rows, []
    present = np.bincount(ix) > 0
    used = np.flatnonzero(present)
    renumber = np.cumsum(present) - 1
    return renumber[ix], rows, used.tolist()
