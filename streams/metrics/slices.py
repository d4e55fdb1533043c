"""Disagreement and outputs broken down by the requests' context (region, tenant, ...).

A model can agree with the primary on average and disagree badly in one region: slices
find that. Each slice is named ``key=value`` after one context entry of the request, and
holds the same exact sums as the whole (:class:`streams.metrics.partial.PartialStats`) plus
coarse sketches of the primary's and the candidate's outputs there (separate, as in a
partial), so slices merge exactly too.

Bounded: a request contributes at most :data:`MAX_KEYS` context keys (the first in sorted
order), and each key at most :data:`MAX_VALUES` distinct values per partial (first seen);
values beyond are counted in ``overflow[key]``, never dropped silently. Merged slices
(the evaluator) keep at most :data:`MERGE_VALUES` values per key, the largest first.
Memory per slice: 5 integers, 3 exact sums and up to two 1,144-bucket output sketches
(9 KB each, dense while a joiner accumulates; sparse on the wire).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from streams.metrics.exact import ExactSum
from streams.metrics.profile import quantiles_from, quantiles_record
from streams.metrics.quantiles import QuantileSketch
from streams.metrics.segmented import update_segments

__all__ = ["MAX_KEYS", "MAX_VALUES", "MERGE_VALUES", "SliceStats", "Slices", "slice_names"]

MAX_KEYS = 8
MAX_VALUES = 32
MERGE_VALUES = 256
MAX_VALUE_CHARS = 64
#: outputs by slice need less resolution than the whole: 5% relative accuracy
SLICE_ALPHA = 0.05


def slice_names(context: Mapping[str, str] | None) -> tuple[str, ...]:
    """The slices a request belongs to: ``key=value`` for its first :data:`MAX_KEYS` keys.

    >>> slice_names({"region": "eu", "channel": "app"})
    ('channel=app', 'region=eu')
    """
    if not context:
        return ()
    keys = sorted(context)[:MAX_KEYS]
    return tuple(f"{k}={str(context[k])[:MAX_VALUE_CHARS]}" for k in keys)


class SliceStats:
    """Exact disagreement sums, counts and an output sketch of one slice."""

    __slots__ = (
        "candidate_output",
        "class_n",
        "disagreements",
        "n",
        "primary_output",
        "requests",
        "sum_abs",
        "sum_diff",
        "sum_sq",
    )

    def __init__(self) -> None:
        self.requests = 0
        self.n = 0
        self.sum_diff = ExactSum()
        self.sum_abs = ExactSum()
        self.sum_sq = ExactSum()
        self.class_n = 0
        self.disagreements = 0
        self.primary_output: QuantileSketch | None = None
        self.candidate_output: QuantileSketch | None = None

    def add_outputs(self, values: np.ndarray, *, primary: bool) -> None:
        side = "primary_output" if primary else "candidate_output"
        out = getattr(self, side)
        if out is None:
            out = QuantileSketch(alpha=SLICE_ALPHA)
            setattr(self, side, out)
        out.update_many(values)  # non-finite ones are counted by the partial's profile

    def output(self, primary: bool) -> QuantileSketch | None:
        return self.primary_output if primary else self.candidate_output

    def add_regression(self, primary: np.ndarray, candidate: np.ndarray) -> None:
        with np.errstate(invalid="ignore", over="ignore"):
            d = candidate - primary
            sq = d * d
        ok = np.isfinite(d) & np.isfinite(sq)
        d, sq = d[ok], sq[ok]
        if d.size:
            self.n += int(d.size)
            self.sum_diff.update_many(d)
            self.sum_abs.update_many(np.abs(d))
            self.sum_sq.update_many(sq)

    @staticmethod
    def add_regression_segments(
        slices: list[SliceStats], primary: np.ndarray, candidate: np.ndarray, seg: np.ndarray
    ) -> None:
        """``slices[k].add_regression`` of the pairs where ``seg == k``, in one pass."""
        with np.errstate(invalid="ignore", over="ignore"):
            d = candidate - primary
            sq = d * d
        ok = np.isfinite(d) & np.isfinite(sq)
        d, sq, seg = d[ok], sq[ok], seg[ok]
        if not d.size:
            return
        k = len(slices)
        for st, n in zip(slices, np.bincount(seg, minlength=k).tolist(), strict=True):
            st.n += n
        # the three sums of every slice in one pass: segments k.. and 2k.. are |d| and d^2
        update_segments(
            [st.sum_diff for st in slices]
            + [st.sum_abs for st in slices]
            + [st.sum_sq for st in slices],
            np.concatenate([d, np.abs(d), sq]),
            np.concatenate([seg, seg + k, seg + 2 * k]),
        )

    @staticmethod
    def add_outputs_segments(
        slices: list[SliceStats], values: np.ndarray, seg: np.ndarray, *, primary: bool
    ) -> None:
        """``slices[k].add_outputs`` of the values where ``seg == k`` (every k has some)."""
        side = "primary_output" if primary else "candidate_output"
        sketches = []
        for st in slices:
            out = getattr(st, side)
            if out is None:
                out = QuantileSketch(alpha=SLICE_ALPHA)
                setattr(st, side, out)
            sketches.append(out)
        QuantileSketch.update_segments(sketches, values, seg)

    def add_classification(self, primary: list[str], candidate: list[str]) -> None:
        self.class_n += len(primary)
        self.disagreements += sum(1 for p, c in zip(primary, candidate, strict=True) if p != c)

    def merge(self, other: SliceStats) -> None:
        self.requests += other.requests
        self.n += other.n
        self.sum_diff.merge(other.sum_diff)
        self.sum_abs.merge(other.sum_abs)
        self.sum_sq.merge(other.sum_sq)
        self.class_n += other.class_n
        self.disagreements += other.disagreements
        for side in ("primary_output", "candidate_output"):
            theirs = getattr(other, side)
            if theirs is not None:
                mine = getattr(self, side)
                if mine is None:
                    setattr(self, side, theirs.copy())
                else:
                    mine.merge(theirs)

    def weight(self) -> int:
        outs = [o.count for o in (self.primary_output, self.candidate_output) if o is not None]
        return max(self.requests, self.n + self.class_n, *outs)

    def summary(self) -> dict[str, Any]:
        n = self.n
        return {
            "requests": self.requests,
            "pairs": n + self.class_n,
            "mae": self.sum_abs.get() / n if n else None,
            "rmse": float(np.sqrt(self.sum_sq.get() / n)) if n else None,
            "mean_signed_diff": self.sum_diff.get() / n if n else None,
            "disagreement_rate": self.disagreements / self.class_n if self.class_n else None,
        }

    def to_record(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "n": self.n,
            "sum_diff": self.sum_diff.to_bytes(),
            "sum_abs_diff": self.sum_abs.to_bytes(),
            "sum_sq_diff": self.sum_sq.to_bytes(),
            "class_n": self.class_n,
            "disagreements": self.disagreements,
            "primary_output": _opt(self.primary_output),
            "candidate_output": _opt(self.candidate_output),
        }

    @classmethod
    def from_record(cls, rec: Mapping[str, Any]) -> SliceStats:
        s = cls()
        s.requests = int(rec["requests"])
        s.n = int(rec["n"])
        s.sum_diff = ExactSum.from_bytes(rec["sum_diff"])
        s.sum_abs = ExactSum.from_bytes(rec["sum_abs_diff"])
        s.sum_sq = ExactSum.from_bytes(rec["sum_sq_diff"])
        s.class_n = int(rec["class_n"])
        s.disagreements = int(rec["disagreements"])
        for side in ("primary_output", "candidate_output"):
            if rec.get(side) is not None:
                setattr(s, side, quantiles_from(rec[side]))
        return s


class Slices:
    """``key=value`` -> :class:`SliceStats`, with the per-key cap and overflow."""

    __slots__ = ("_per_key", "by_name", "overflow")

    def __init__(self) -> None:
        self.by_name: dict[str, SliceStats] = {}
        self.overflow: dict[str, int] = {}
        #: slices per key in :attr:`by_name`, counted again when None (after a merge or a cap)
        self._per_key: dict[str, int] | None = None

    def get(self, name: str, n: int = 1) -> SliceStats | None:
        """The slice to fold ``n`` values into, or None (counted) when its key is full."""
        s = self.by_name.get(name)
        if s is not None:
            return s
        key = name.split("=", 1)[0]
        per_key = self._per_key
        if per_key is None:
            # counted once, not per new slice: that was quadratic in the slices of a fold
            per_key = self._per_key = {}
            for k in self.by_name:
                head = k.split("=", 1)[0]
                per_key[head] = per_key.get(head, 0) + 1
        held = per_key.get(key, 0)
        if held >= MAX_VALUES:
            self.overflow[key] = self.overflow.get(key, 0) + n
            return None
        per_key[key] = held + 1
        s = self.by_name[name] = SliceStats()
        return s

    def merge(self, other: Slices) -> None:
        for name, s in other.by_name.items():
            mine = self.by_name.get(name)
            if mine is None:
                mine = self.by_name[name] = SliceStats()
            mine.merge(s)
        for key, n in other.overflow.items():
            self.overflow[key] = self.overflow.get(key, 0) + n
        self._per_key = None
        self._cap(MERGE_VALUES)

    def _cap(self, cap: int) -> None:
        by_key: dict[str, list[str]] = {}
        for name in self.by_name:
            by_key.setdefault(name.split("=", 1)[0], []).append(name)
        for key, names in by_key.items():
            if len(names) <= cap:
                continue
            ranked = sorted(names, key=lambda nm: (-self.by_name[nm].weight(), nm))
            for name in ranked[cap:]:
                self.overflow[key] = self.overflow.get(key, 0) + self.by_name.pop(name).weight()
        self._per_key = None

    def is_empty(self) -> bool:
        return not self.by_name and not self.overflow

    def to_record(self) -> dict[str, Any]:
        return {
            "slices": {k: s.to_record() for k, s in sorted(self.by_name.items())},
            "slice_overflow": dict(sorted(self.overflow.items())),
        }

    @classmethod
    def from_record(cls, rec: Mapping[str, Any]) -> Slices:
        out = cls()
        out.by_name = {k: SliceStats.from_record(v) for k, v in (rec.get("slices") or {}).items()}
        out.overflow = {k: int(v) for k, v in (rec.get("slice_overflow") or {}).items()}
        return out


def _opt(s: QuantileSketch | None) -> dict[str, Any] | None:
    return None if s is None else quantiles_record(s)
