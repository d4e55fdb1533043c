"""What the inputs or the outputs looked like over some events: the raw material of drift.

A ``*`` partial profiles the requests (every numeric and categorical feature) and the
primary's outputs; a candidate's partial profiles that candidate's outputs. Like the two
latency sketches of a partial, the primary's and the candidate's outputs are separate
fields, so merging a window's ``*`` partial into a candidate's keeps both apart. Everything is
a fixed-memory mergeable sketch (:mod:`streams.metrics.quantiles`,
:mod:`streams.metrics.categories`), so profiles merge exactly across partitions and
batches, like the rest of a partial.

Memory is bounded whatever the traffic: at most :data:`MAX_FEATURES` features per profile
(a producer that sends a new feature name per request must not grow state without end;
values of features beyond it are counted in ``dropped_features``), each numeric one a
44,488-byte sketch, each categorical one at most 64 counted values (under 4 KB). Values
that are NaN or infinite are counted in ``non_finite``, never sketched.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from streams.metrics.categories import CategoryCounts
from streams.metrics.quantiles import QuantileSketch

__all__ = ["MAX_FEATURES", "MERGE_CAP", "Profile", "quantiles_from", "quantiles_record"]

MAX_FEATURES = 256
"""Distinct feature names per profile (numeric and categorical together)."""
MERGE_CAP = 1024
"""Distinct values a merged categorical profile keeps (the joiner keeps 64 per partial)."""


def quantiles_record(s: QuantileSketch) -> dict[str, Any]:
    indices, counts = s.to_sparse()
    alpha, lo, hi = s.params()
    return {"alpha": alpha, "min_value": lo, "max_value": hi, "indices": indices, "counts": counts}


def quantiles_from(rec: Mapping[str, Any]) -> QuantileSketch:
    return QuantileSketch.from_sparse(
        rec["indices"],
        rec["counts"],
        alpha=rec["alpha"],
        min_value=rec["min_value"],
        max_value=rec["max_value"],
    )


class Profile:
    """Sketches of features and of one model's outputs; ``merge`` adds them.

    >>> import numpy as np
    >>> a, b = Profile(), Profile()
    >>> a.add_numeric("sqft", np.array([50.0, 70.0, float("nan")]))
    >>> b.add_numeric("sqft", np.array([90.0]))
    >>> b.add_categorical("city", ["Paris", "Lyon"])
    >>> a.merge(b)
    >>> a.numeric["sqft"].count, a.non_finite, a.categorical["city"].count
    (3, 1, 2)
    """

    __slots__ = (
        "candidate_labels",
        "candidate_output",
        "categorical",
        "dropped_features",
        "non_finite",
        "numeric",
        "primary_labels",
        "primary_output",
    )

    def __init__(self) -> None:
        self.numeric: dict[str, QuantileSketch] = {}
        self.categorical: dict[str, CategoryCounts] = {}
        self.primary_output: QuantileSketch | None = None
        self.primary_labels: CategoryCounts | None = None
        self.candidate_output: QuantileSketch | None = None
        self.candidate_labels: CategoryCounts | None = None
        self.non_finite = 0
        self.dropped_features = 0

    def _room(self, name: str, n: int) -> bool:
        if name in self.numeric or name in self.categorical:
            return True
        if len(self.numeric) + len(self.categorical) < MAX_FEATURES:
            return True
        self.dropped_features += n
        return False

    def add_numeric(self, name: str, values: np.ndarray) -> None:
        if not values.size or not self._room(name, int(values.size)):
            return
        s = self.numeric.get(name)
        if s is None:
            s = self.numeric[name] = QuantileSketch()
        self.non_finite += s.update_many(values)

    def add_numeric_table(self, names: Sequence[str], table: np.ndarray) -> None:
        """:meth:`add_numeric` of ``table[i]`` under ``names[i]``, for every i, with one
        vectorised pass over the whole table instead of one per feature (the per-call
        cost of ~20 numpy calls was a third of a 1,000-request fold)."""
        n = int(table.shape[1])
        if not n:
            return
        rows: list[int] = []
        sketches: list[QuantileSketch] = []
        for i, name in enumerate(names):
            if not self._room(name, n):
                continue
            s = self.numeric.get(name)
            if s is None:
                s = self.numeric[name] = QuantileSketch()
            rows.append(i)
            sketches.append(s)
        if not rows:
            return
        values = table if len(rows) == len(names) else table[rows]
        self.non_finite += sum(QuantileSketch.update_rows(sketches, values))

    def add_categorical(self, name: str, values: list[str]) -> None:
        if not values or not self._room(name, len(values)):
            return
        c = self.categorical.get(name)
        if c is None:
            c = self.categorical[name] = CategoryCounts()
        c.update_many(values)

    def add_outputs(self, values: np.ndarray, labels: Iterable[str] = (), *, primary: bool) -> None:
        """The primary's or a candidate's regression values and/or class labels."""
        side = "primary" if primary else "candidate"
        if values.size:
            out = getattr(self, f"{side}_output")
            if out is None:
                out = QuantileSketch()
                setattr(self, f"{side}_output", out)
            self.non_finite += out.update_many(values)
        labels = list(labels)
        if labels:
            lab = getattr(self, f"{side}_labels")
            if lab is None:
                lab = CategoryCounts()
                setattr(self, f"{side}_labels", lab)
            lab.update_many(labels)

    def output(self, primary: bool) -> QuantileSketch | None:
        return self.primary_output if primary else self.candidate_output

    def labels(self, primary: bool) -> CategoryCounts | None:
        return self.primary_labels if primary else self.candidate_labels

    def merge(self, other: Profile) -> None:
        for name, s in other.numeric.items():
            mine = self.numeric.get(name)
            if mine is not None:
                mine.merge(s)
            elif self._room(name, s.count):
                self.numeric[name] = s.copy()
        for name, c in other.categorical.items():
            mine_c = self.categorical.get(name)
            if mine_c is not None:
                self.categorical[name] = CategoryCounts.merged([mine_c, c], cap=MERGE_CAP)
            elif self._room(name, c.count):
                self.categorical[name] = CategoryCounts.merged([c], cap=MERGE_CAP)
        for side in ("primary", "candidate"):
            theirs = getattr(other, f"{side}_output")
            if theirs is not None:
                mine_o = getattr(self, f"{side}_output")
                if mine_o is None:
                    setattr(self, f"{side}_output", theirs.copy())
                else:
                    mine_o.merge(theirs)
            their_l = getattr(other, f"{side}_labels")
            if their_l is not None:
                mine_l = getattr(self, f"{side}_labels")
                both = [their_l] if mine_l is None else [mine_l, their_l]
                setattr(self, f"{side}_labels", CategoryCounts.merged(both, cap=MERGE_CAP))
        self.non_finite += other.non_finite
        self.dropped_features += other.dropped_features

    def is_empty(self) -> bool:
        return (
            not self.numeric
            and not self.categorical
            and self.primary_output is None
            and self.primary_labels is None
            and self.candidate_output is None
            and self.candidate_labels is None
            and not self.non_finite
            and not self.dropped_features
        )

    @property
    def requests(self) -> int:
        """Values of the most-filled feature: how many requests this profile saw (about)."""
        counts = [s.count for s in self.numeric.values()]
        counts += [c.count for c in self.categorical.values()]
        return max(counts, default=0)

    # -- Avro --------------------------------------------------------------------------

    def to_record(self) -> dict[str, Any]:
        return {
            "numeric": {k: quantiles_record(s) for k, s in sorted(self.numeric.items())},
            "categorical": {k: c.to_record() for k, c in sorted(self.categorical.items())},
            **{
                f"{side}_output": None if o is None else quantiles_record(o)
                for side, o in (
                    ("primary", self.primary_output),
                    ("candidate", self.candidate_output),
                )
            },
            **{
                f"{side}_labels": None if c is None else c.to_record()
                for side, c in (
                    ("primary", self.primary_labels),
                    ("candidate", self.candidate_labels),
                )
            },
            "non_finite": self.non_finite,
            "dropped_features": self.dropped_features,
        }

    @classmethod
    def from_record(cls, rec: Mapping[str, Any] | None) -> Profile:
        p = cls()
        if not rec:
            return p
        p.numeric = {k: quantiles_from(v) for k, v in rec.get("numeric", {}).items()}
        p.categorical = {k: _counts(v) for k, v in rec.get("categorical", {}).items()}
        for side in ("primary", "candidate"):
            if rec.get(f"{side}_output") is not None:
                setattr(p, f"{side}_output", quantiles_from(rec[f"{side}_output"]))
            if rec.get(f"{side}_labels") is not None:
                setattr(p, f"{side}_labels", _counts(rec[f"{side}_labels"]))
        p.non_finite = int(rec.get("non_finite", 0))
        p.dropped_features = int(rec.get("dropped_features", 0))
        return p


def _counts(rec: Mapping[str, Any]) -> CategoryCounts:
    """A joiner's counts come back with the joiner's cap (a restored accumulator must admit
    new values exactly as one that never stopped); a merged profile's with the larger one."""
    n = len(rec["counts"])
    return CategoryCounts.from_record(rec, cap=CategoryCounts.DEFAULT_CAP if n <= 64 else MERGE_CAP)
