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
        "contexts",
        "glob",
        "ids",
        "out",
        "out_ids",
        "reg_c",
        "reg_ids",
        "reg_p",
        "req_ids",
    )

    def __init__(self, contexts: ContextIndex | None = None) -> None:
        #: the partition's numbering of contexts, shared by its buffers batch after batch
        self.contexts = contexts if contexts is not None else ContextIndex()
        #: context (its slice names) -> id, in first-seen order in this buffer
        self.ids: dict[tuple[str, ...], int] = {}
        #: each of those ids' number in :attr:`contexts`
        self.glob: list[int] = []
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
            self.glob.append(self.contexts.number(ctx))
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
        spread = _Spread(self.contexts, self.glob)
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


class ContextIndex:
    """Contexts and slice names numbered once, for every buffer of a partition.

    Why: a buffer lives one batch, and spelling out its contexts' slice names again for
    every fold (a dict look-up per name of every context) was a tenth of the statistics'
    fold time (``bench/statistics.py``, cProfile). Numbered here once, a fold finds its
    contexts' names with a few numpy gathers. The numbering is only a cache: which
    slices a fold admits, and in what order, depends on the buffer's own first-seen
    order (:class:`_Spread`), never on this one.

    Bounded: past :data:`MAX_CONTEXTS` contexts the owner starts a new index between
    folds (:meth:`full`), when no buffer holds numbers of this one.
    """

    __slots__ = ("_arrays", "_flat", "_lens", "_starts", "contexts", "names", "spelled")

    def __init__(self) -> None:
        self.contexts: dict[tuple[str, ...], int] = {}
        self.names: dict[str, int] = {}
        #: slice names by number
        self.spelled: list[str] = []
        self._flat: list[int] = []
        self._lens: list[int] = []
        self._starts: list[int] = []
        self._arrays: tuple[Ids, Ids, Ids] | None = None

    def number(self, ctx: tuple[str, ...]) -> int:
        i = self.contexts.get(ctx)
        if i is not None:
            return i
        i = self.contexts[ctx] = len(self.contexts)
        self._starts.append(len(self._flat))
        self._lens.append(len(ctx))
        for name in ctx:
            j = self.names.get(name)
            if j is None:
                j = self.names[name] = len(self.spelled)
                self.spelled.append(name)
            self._flat.append(j)
        self._arrays = None
        return i

    def arrays(self) -> tuple[Ids, Ids, Ids]:
        """(name numbers of every context laid end to end, each context's count, start)."""
        if self._arrays is None:
            self._arrays = (
                np.asarray(self._flat, dtype=np.intp),
                np.asarray(self._lens, dtype=np.intp),
                np.asarray(self._starts, dtype=np.intp),
            )
        return self._arrays

    def full(self) -> bool:
        return len(self.contexts) >= MAX_CONTEXTS


#: Contexts one :class:`ContextIndex` numbers before its owner starts a new one (a few
#: hundred bytes each: ~3 MB at most).
MAX_CONTEXTS = 10_000


class _Spread:
    """The slice names of a buffer's contexts, and how a value's context spreads to them."""

    def __init__(self, index: ContextIndex, glob: list[int]) -> None:
        flat, lens, starts = index.arrays()
        g = np.asarray(glob, dtype=np.intp)  # the buffer's contexts, in its id order
        k = lens[g]
        total = int(k.sum())
        gathered = flat[np.repeat(starts[g] - (np.cumsum(k) - k), k) + np.arange(total)]
        # slice names in the buffer's first-seen order (contexts in id order, names in
        # each context's order), numbered 0.. in that order
        numbers, first = np.unique(gathered, return_index=True)
        seen = numbers[np.argsort(first, kind="stable")]
        local = np.empty(len(index.spelled), dtype=np.intp)
        local[seen] = np.arange(seen.size, dtype=np.intp)
        spelled = index.spelled
        #: slice names in first-seen order
        self.order = [spelled[j] for j in seen.tolist()]
        self._flat = local[gathered]
        self._lens = k
        self._starts = np.cumsum(k) - k

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
