"""Losses on labelled requests: each model's, and the candidate's paired against the primary.

When the ground truth of a request arrives (``<prefix>.labels``, possibly hours later), the
joiner scores every model that answered it. On the shared side (``*``) the statistics are
the primary's; on a candidate's side they are the candidate's *and the primary's on the
same requests* (both answered, both without error), so the two are compared on the same
requests, and the paired loss difference (candidate - primary) is kept as exact sums of
its values and squares: what a verdict's confidence sequence needs (issue 8).

Losses:

- regression: absolute error (MAE) and squared error (RMSE); the paired difference is of
  absolute errors;
- classification: 0/1 error (accuracy) and, when the model published class scores, the
  log-loss ``-log(max(p_true, 1e-15))``; the paired difference is of log-losses when both
  models have scores, else of 0/1 errors.

Every sum is an :class:`~streams.metrics.exact.ExactSum` and every count an integer, so
merging is addition and the numbers do not depend on batching, restarts or merge order.
Values are added one labelled request at a time: labels come at most at the request rate,
and about ten exact scalar additions per label cost microseconds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from streams.metrics.exact import ExactSum

__all__ = ["LOG_LOSS_FLOOR", "LabelStats", "Loss", "loss_of"]

#: probabilities below this count as this: a confident wrong answer costs ~34.5, not inf
LOG_LOSS_FLOOR = 1e-15

#: (absolute or 0/1 error, squared error or None, log-loss or None)
Loss = tuple[float, float | None, float | None]


def loss_of(
    truth_value: float | None,
    truth_label: str | None,
    value: float | None,
    label: str | None,
    scores: Mapping[str, float] | None,
) -> Loss | None:
    """One model's loss on one labelled request, or None when they cannot be compared
    (a regression truth for a classifier's answer, a non-finite value, ...).

    >>> loss_of(3.0, None, 2.5, None, None)
    (0.5, 0.25, None)
    >>> loss_of(None, "cat", None, "dog", {"cat": 0.25, "dog": 0.75})
    (1.0, None, 1.3862943611198906)
    """
    if truth_value is not None and value is not None:
        err = abs(float(value) - float(truth_value))
        if not math.isfinite(err) or not math.isfinite(err * err):
            return None
        return err, err * err, None
    if truth_label is not None and label is not None:
        wrong = 0.0 if label == truth_label else 1.0
        ll = None
        if scores:
            p = scores.get(truth_label, 0.0)
            if math.isfinite(p):
                ll = -math.log(max(p, LOG_LOSS_FLOOR))
        return wrong, None, ll
    return None


class LabelStats:
    """Exact loss sums of one model (and, on a candidate's side, of the primary beside it)."""

    __slots__ = (
        "class_n",
        "diff_n",
        "diff_sq",
        "diff_sum",
        "ll_n",
        "model_abs",
        "model_ll",
        "model_sq",
        "model_wrong",
        "n",
        "primary_abs",
        "primary_ll",
        "primary_sq",
        "primary_wrong",
    )

    def __init__(self) -> None:
        #: labelled regression requests (the model's, or the pairs', answers scored)
        self.n = 0
        self.model_abs = ExactSum()
        self.model_sq = ExactSum()
        self.primary_abs = ExactSum()
        self.primary_sq = ExactSum()
        #: labelled classification requests; wrong answers of each
        self.class_n = 0
        self.model_wrong = 0
        self.primary_wrong = 0
        #: requests with a log-loss for the model (and the primary, on a candidate's side)
        self.ll_n = 0
        self.model_ll = ExactSum()
        self.primary_ll = ExactSum()
        #: the paired loss difference, candidate - primary (candidate side only)
        self.diff_n = 0
        self.diff_sum = ExactSum()
        self.diff_sq = ExactSum()

    def add(self, model: Loss, primary: Loss | None = None) -> bool:
        """One labelled request: the model's loss, and on a candidate's side the primary's
        on the same request (a pair). False, and nothing added, when the two losses are of
        different kinds (a regression answer beside a class label)."""
        err, sq, ll = model
        if primary is not None and (sq is None) != (primary[1] is None):
            return False
        if sq is not None:
            self.n += 1
            self.model_abs.update(err)
            self.model_sq.update(sq)
        else:
            self.class_n += 1
            self.model_wrong += int(err)
        if primary is None:
            if ll is not None:
                self.ll_n += 1
                self.model_ll.update(ll)
            return True
        p_err, p_sq, p_ll = primary
        if p_sq is not None:
            self.primary_abs.update(p_err)
            self.primary_sq.update(p_sq)
        else:
            self.primary_wrong += int(p_err)
        d = err - p_err
        if ll is not None and p_ll is not None:
            self.ll_n += 1
            self.model_ll.update(ll)
            self.primary_ll.update(p_ll)
            d = ll - p_ll
        self.diff_n += 1
        self.diff_sum.update(d)
        self.diff_sq.update(d * d)
        return True

    def merge(self, other: LabelStats) -> None:
        for name in self.__slots__:
            mine = getattr(self, name)
            if isinstance(mine, ExactSum):
                mine.merge(getattr(other, name))
            else:
                setattr(self, name, mine + getattr(other, name))

    def is_empty(self) -> bool:
        return self.n == 0 and self.class_n == 0 and self.ll_n == 0 and self.diff_n == 0

    def summary(self) -> dict[str, Any]:
        """MAE, RMSE, accuracy and log-loss of the model and of the primary beside it, and
        the paired difference's count, mean and standard deviation."""
        n, cn, ln, dn = self.n, self.class_n, self.ll_n, self.diff_n
        mean_d = self.diff_sum.get() / dn if dn else None
        sd = None
        if dn > 1 and mean_d is not None:
            var = (self.diff_sq.get() - dn * mean_d * mean_d) / (dn - 1)
            sd = math.sqrt(max(var, 0.0))
        return {
            "n": n,
            "mae": self.model_abs.get() / n if n else None,
            "rmse": math.sqrt(self.model_sq.get() / n) if n else None,
            "primary_mae": self.primary_abs.get() / n if n and dn else None,
            "primary_rmse": math.sqrt(self.primary_sq.get() / n) if n and dn else None,
            "class_n": cn,
            "accuracy": 1.0 - self.model_wrong / cn if cn else None,
            "primary_accuracy": 1.0 - self.primary_wrong / cn if cn and dn else None,
            "log_loss": self.model_ll.get() / ln if ln else None,
            "primary_log_loss": self.primary_ll.get() / ln if ln and dn else None,
            "diff_n": dn,
            "diff_sum": self.diff_sum.get(),
            "diff_sum_sq": self.diff_sq.get(),
            "diff_mean": mean_d,
            "diff_sd": sd,
        }

    def to_record(self) -> dict[str, Any]:
        rec: dict[str, Any] = {}
        for name in self.__slots__:
            v = getattr(self, name)
            rec[name] = v.to_bytes() if isinstance(v, ExactSum) else v
        return rec

    @classmethod
    def from_record(cls, rec: Mapping[str, Any]) -> LabelStats:
        s = cls()
        for name in cls.__slots__:
            mine = getattr(s, name)
            if isinstance(mine, ExactSum):
                setattr(s, name, ExactSum.from_bytes(rec[name]))
            else:
                setattr(s, name, int(rec[name]))
        return s
