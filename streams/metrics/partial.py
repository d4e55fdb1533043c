"""Mergeable statistics of one candidate (or of the shared side, ``*``) over some events.

Everything here is a count, an exact sum or a fixed-bucket sketch, so merging two partials
is adding their fields, and the merge of partials over any split of the data is *exactly*
the statistic over all of it: this is what lets any number of joiner partitions, batches
and restarts combine into the same final numbers.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from streams.metrics.exact import ExactSum
from streams.metrics.labelled import LabelStats
from streams.metrics.profile import Profile
from streams.metrics.segmented import update_segments
from streams.metrics.sketch import LatencySketch
from streams.metrics.slices import Slices

#: Coverage counters, in the order of the Avro ``Coverage`` record.
COVERAGE_FIELDS = (
    "requests",
    "pairs",
    "no_primary",
    "no_candidate",
    "no_request",
    "expired",
    "duplicates",
    "primary_predictions",
    "candidate_predictions",
    "primary_errors",
    "candidate_errors",
    "invalid",
    "no_prediction",
    "dead_letters",
    "dropped_latencies",
    "evicted",
    "labels",
    "label_duplicates",
    "labels_early",
    "labels_unmatched",
    "labels_evicted",
    "labels_other_primary",
)

SHARED = "*"


def _sketch_record(s: LatencySketch) -> dict[str, Any]:
    indices, counts = s.to_sparse()
    return {
        "alpha": s.alpha,
        "min_value": s.min_value,
        "max_value": s.max_value,
        "indices": indices,
        "counts": counts,
    }


def _sketch_from(rec: dict[str, Any]) -> LatencySketch:
    return LatencySketch.from_sparse(
        rec["indices"],
        rec["counts"],
        alpha=rec["alpha"],
        min_value=rec["min_value"],
        max_value=rec.get("max_value", LatencySketch.DEFAULT_MAX_VALUE),
    )


class PartialStats:
    """Counts, exact disagreement sums and latency sketches; ``merge`` is field-wise addition.

    Regression pairs contribute d = candidate - primary to exact sums of d, |d| and d^2
    (MAE, RMSE and the mean signed difference follow); classifier pairs count label
    disagreements. Non-finite values never enter a sum: the pair is counted ``invalid``.

    Examples
    --------
    >>> import numpy as np
    >>> a, b = PartialStats(), PartialStats()
    >>> a.add_regression(np.array([1.0, 2.0]), np.array([1.5, 1.0]))
    >>> b.add_regression(np.array([3.0]), np.array([3.0]))
    >>> a.merge(b)
    >>> a.regression_n, a.summary()["mae"]
    (3, 0.5)
    """

    __slots__ = (
        "candidate_latency",
        "class_disagreements",
        "class_n",
        "coverage",
        "labelled",
        "primary_latency",
        "profile",
        "regression_n",
        "slices",
        "sum_abs_diff",
        "sum_diff",
        "sum_sq_diff",
    )

    def __init__(self) -> None:
        self.coverage: dict[str, int] = dict.fromkeys(COVERAGE_FIELDS, 0)
        self.regression_n = 0
        self.sum_diff = ExactSum()
        self.sum_abs_diff = ExactSum()
        self.sum_sq_diff = ExactSum()
        self.class_n = 0
        self.class_disagreements = 0
        self.primary_latency = LatencySketch()
        self.candidate_latency = LatencySketch()
        #: features (on '*') and this side's model outputs: what drift is judged on
        self.profile = Profile()
        #: disagreement and outputs by context slice
        self.slices = Slices()
        #: losses on labelled requests (a candidate's side only: see streams.metrics.labelled)
        self.labelled: LabelStats | None = None

    def labels(self) -> LabelStats:
        """The labelled-loss sums, created on first use."""
        if self.labelled is None:
            self.labelled = LabelStats()
        return self.labelled

    # -- updates ---------------------------------------------------------------------------

    def count(self, name: str, n: int = 1) -> None:
        self.coverage[name] += n

    def add_regression(self, primary: np.ndarray, candidate: np.ndarray) -> None:
        """Fold regression pairs; non-finite pairs are counted ``invalid`` and skipped."""
        with np.errstate(invalid="ignore", over="ignore"):  # counted below, not warned
            d = np.asarray(candidate, dtype=np.float64) - np.asarray(primary, dtype=np.float64)
            sq = d * d
        ok = np.isfinite(d) & np.isfinite(sq)
        if not ok.all():
            self.coverage["invalid"] += int((~ok).sum())
            d, sq = d[ok], sq[ok]
        if d.size == 0:
            return
        self.regression_n += int(d.size)
        update_segments(  # the three sums in one vectorised pass
            [self.sum_diff, self.sum_abs_diff, self.sum_sq_diff],
            np.concatenate([d, np.abs(d), sq]),
            np.repeat(np.arange(3, dtype=np.intp), d.size),
        )

    def add_classification(self, primary: list[str], candidate: list[str]) -> None:
        self.class_n += len(primary)
        self.class_disagreements += sum(
            1 for p, c in zip(primary, candidate, strict=True) if p != c
        )

    def add_latency(self, primary: np.ndarray | None, candidate: np.ndarray | None) -> None:
        """Latencies in ms; NaN and negative values are dropped (a clock glitch, not a time)."""
        for sketch, values in (
            (self.primary_latency, primary),
            (self.candidate_latency, candidate),
        ):
            if values is None or len(values) == 0:
                continue
            v = np.asarray(values, dtype=np.float64)
            v = v[np.isfinite(v) & (v >= 0)]
            if v.size:
                sketch.update_many(v)

    def merge(self, other: PartialStats) -> None:
        for k, v in other.coverage.items():
            self.coverage[k] += v
        self.regression_n += other.regression_n
        self.sum_diff.merge(other.sum_diff)
        self.sum_abs_diff.merge(other.sum_abs_diff)
        self.sum_sq_diff.merge(other.sum_sq_diff)
        self.class_n += other.class_n
        self.class_disagreements += other.class_disagreements
        self.primary_latency.merge(other.primary_latency)
        self.candidate_latency.merge(other.candidate_latency)
        self.profile.merge(other.profile)
        self.slices.merge(other.slices)
        if other.labelled is not None:
            self.labels().merge(other.labelled)

    def is_empty(self) -> bool:
        return (
            not any(self.coverage.values())
            and self.regression_n == 0
            and self.class_n == 0
            and self.primary_latency.count == 0
            and self.candidate_latency.count == 0
            and self.profile.is_empty()
            and self.slices.is_empty()
            and (self.labelled is None or self.labelled.is_empty())
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PartialStats):
            return NotImplemented
        return self.to_record() == other.to_record()

    __hash__ = None  # type: ignore[assignment]

    # -- reading ---------------------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        """The judged numbers: disagreement, latency quantiles and error rates."""
        n = self.regression_n
        cov = self.coverage
        out: dict[str, Any] = {
            "task": "regression" if n else ("classification" if self.class_n else ""),
            "mae": self.sum_abs_diff.get() / n if n else None,
            "rmse": math.sqrt(self.sum_sq_diff.get() / n) if n else None,
            "mean_signed_diff": self.sum_diff.get() / n if n else None,
            "sum_diff": self.sum_diff.get(),
            "sum_abs_diff": self.sum_abs_diff.get(),
            "sum_sq_diff": self.sum_sq_diff.get(),
            "regression_pairs": n,
            "disagreement_rate": self.class_disagreements / self.class_n if self.class_n else None,
            "classification_pairs": self.class_n,
            "primary_error_rate": (
                cov["primary_errors"] / cov["primary_predictions"]
                if cov["primary_predictions"]
                else None
            ),
            "candidate_error_rate": (
                cov["candidate_errors"] / cov["candidate_predictions"]
                if cov["candidate_predictions"]
                else None
            ),
            "labelled": (
                None
                if self.labelled is None or self.labelled.is_empty()
                else self.labelled.summary()
            ),
        }
        for side, sketch in (
            ("primary", self.primary_latency),
            ("candidate", self.candidate_latency),
        ):
            for q, name in ((0.5, "p50"), (0.95, "p95"), (0.99, "p99")):
                out[f"{side}_latency_{name}"] = sketch.quantile(q) if sketch.count else None
        return out

    # -- Avro ------------------------------------------------------------------------------

    def to_record(self) -> dict[str, Any]:
        """The statistics part of an Avro ``Partial`` record."""
        return {
            "coverage": dict(self.coverage),
            "regression": {
                "n": self.regression_n,
                "exact_scale": ExactSum.SCALE,
                "sum_diff": self.sum_diff.to_bytes(),
                "sum_abs_diff": self.sum_abs_diff.to_bytes(),
                "sum_sq_diff": self.sum_sq_diff.to_bytes(),
            },
            "classification": {"n": self.class_n, "disagreements": self.class_disagreements},
            "primary_latency": _sketch_record(self.primary_latency),
            "candidate_latency": _sketch_record(self.candidate_latency),
            "profile": self.profile.to_record(),
            **self.slices.to_record(),
            "labelled": (
                None
                if self.labelled is None or self.labelled.is_empty()
                else self.labelled.to_record()
            ),
        }

    def to_partial(self, **identity: Any) -> dict[str, Any]:
        """A whole Avro ``Partial`` record: ``identity`` fields, neutral defaults, statistics.

        Also how state stores keep statistics (joiner changelog, evaluator tables), with no
        identity: one encoding for every place a PartialStats is written.
        """
        rec: dict[str, Any] = {
            "joiner_partition": -1,
            "partition_count": 0,
            "candidate": "",
            "primary": "",
            "window_start": 0,
            "window_end": 0,
            "seq": 0,
            "watermark": 0,
        }
        rec.update(identity)
        rec.update(self.to_record())
        return rec

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> PartialStats:
        s = cls()
        for k in COVERAGE_FIELDS:
            s.coverage[k] = int(rec["coverage"].get(k, 0))
        reg = rec["regression"]
        if reg["n"] and reg["exact_scale"] != ExactSum.SCALE:
            raise ValueError(f"exact_scale {reg['exact_scale']} != {ExactSum.SCALE}")
        s.regression_n = int(reg["n"])
        s.sum_diff = ExactSum.from_bytes(reg["sum_diff"])
        s.sum_abs_diff = ExactSum.from_bytes(reg["sum_abs_diff"])
        s.sum_sq_diff = ExactSum.from_bytes(reg["sum_sq_diff"])
        s.class_n = int(rec["classification"]["n"])
        s.class_disagreements = int(rec["classification"]["disagreements"])
        s.primary_latency = _sketch_from(rec["primary_latency"])
        s.candidate_latency = _sketch_from(rec["candidate_latency"])
        s.profile = Profile.from_record(rec.get("profile"))
        s.slices = Slices.from_record(rec)
        if rec.get("labelled") is not None:
            s.labelled = LabelStats.from_record(rec["labelled"])
        return s
