"""A fixed-memory, mergeable latency sketch with relative-error quantiles (DDSketch-style).

Why this shape: the joiner keeps one latency sketch per (partition, candidate, window) and
the evaluator merges them from every partition. With logarithmic buckets over a FIXED
value range, every sketch with the same parameters has the same bucket array, so merging
is adding two integer arrays: exact, commutative and associative, whatever the batching,
the number of partitions or the order partials arrive in. Each bucket spans a factor
``gamma = (1 + alpha) / (1 - alpha)``, so any value in it is within relative error
``alpha`` of the bucket's representative, which is what a p99 latency needs (1% of
250 ms, not "somewhere in the 200-300 ms bin").

Bucket boundaries are the powers ``gamma**k`` built by repeated IEEE multiplication (or
division) from ``1.0``, and a value is placed by binary search over them (comparisons
only, no ``log``), so where a value lands depends only on the value and the parameters:
the same on every machine, for :meth:`LatencySketch.update` and
:meth:`LatencySketch.update_many`, and for any batch split.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from functools import lru_cache
from typing import ClassVar

import numpy as np
import numpy.typing as npt

from streams.metrics.buckets import BucketSketch, log_powers

__all__ = ["LatencySketch"]


@dataclass(frozen=True)
class _Layout:
    """The shared, read-only bucket layout of one parameter set."""

    gamma: float
    edges: npt.NDArray[np.float64]  # bucket i holds edges[i-1] < x <= edges[i]
    edge_list: list[float]  # the same, for bisect in the scalar path
    values: npt.NDArray[np.float64]  # what quantile() reports for each bucket


@lru_cache(maxsize=32)
def _layout(alpha: float, min_value: float, max_value: float) -> _Layout:
    gamma, powers, lo, hi = log_powers(alpha, min_value, max_value)
    edge_list = [math.nextafter(min_value, 0.0), *powers[lo:hi], max_value]
    # A log bucket (powers[k-1], powers[k]] reports the harmonic mean of its bounds, the
    # point whose relative distance to both ends is the same, (gamma-1)/(gamma+1) = alpha.
    reps = [
        2.0 * a * b / (a + b) for a, b in zip(powers[lo - 1 : hi], powers[lo : hi + 1], strict=True)
    ]
    values = np.array([min_value, *reps, max_value], dtype=np.float64)
    edges = np.array(edge_list, dtype=np.float64)
    edges.flags.writeable = False
    values.flags.writeable = False
    return _Layout(gamma=gamma, edges=edges, edge_list=edge_list, values=values)


class LatencySketch(BucketSketch):
    """Relative-error quantile sketch over a fixed range, merged by adding count arrays.

    Values are latencies in milliseconds. ``counts`` is an int64 array of ``n_buckets``:

    - bucket ``0`` (underflow) counts values in ``[0, min_value)``; quantiles that land
      there are reported as ``min_value`` (an upper bound: "below 1 µs" by default);
    - buckets ``1 .. n_buckets - 2`` are logarithmic; a value ``x`` in one is reported
      within relative error ``alpha`` (up to float rounding, ~1e-15);
    - bucket ``n_buckets - 1`` (overflow) counts values above ``max_value``, ``inf``
      included; quantiles that land there are reported as ``max_value`` (a lower bound).

    With the defaults (alpha 1%, 1 µs to 10^7 ms, about 2.8 hours) that is
    :attr:`BUCKETS` = 1154 buckets, 9 KiB, whatever the traffic.

    Rank rule: ``quantile(q)`` estimates the order statistic of 0-based rank
    ``floor(q * (n - 1))``, the one ``np.quantile(values, q, method="lower")`` returns, and
    is within relative error ``alpha`` of it when it lies in ``[min_value, max_value]``.

    NaN and negative values raise ``ValueError`` (a latency is never either; callers drop
    and count them).

    Example
    -------
    >>> import numpy as np
    >>> a, b = LatencySketch(), LatencySketch()
    >>> a.update_many(np.arange(1.0, 501.0))
    >>> b.update_many(np.arange(501.0, 1001.0))
    >>> a.merge(b)
    >>> a.count
    1000
    >>> p50 = a.quantile(0.5)  # exact answer: 500.0
    >>> abs(p50 - 500.0) / 500.0 <= a.alpha
    True
    >>> a == LatencySketch.from_sparse(*a.to_sparse())
    True
    """

    DEFAULT_ALPHA: ClassVar[float] = 0.01
    DEFAULT_MIN_VALUE: ClassVar[float] = 1e-3
    DEFAULT_MAX_VALUE: ClassVar[float] = 1e7
    #: Number of buckets with the default parameters (an instance has ``n_buckets``).
    BUCKETS: ClassVar[int] = _layout(
        DEFAULT_ALPHA, DEFAULT_MIN_VALUE, DEFAULT_MAX_VALUE
    ).values.size

    __slots__ = ()
    _make_layout = staticmethod(_layout)

    @property
    def underflow(self) -> int:
        """How many values were below ``min_value`` (reported as ``min_value``)."""
        return int(self.counts[0])

    @property
    def overflow(self) -> int:
        """How many values were above ``max_value`` (reported as ``max_value``)."""
        return int(self.counts[-1])

    def update(self, x: float) -> None:
        """Add one value (ms).

        Raises
        ------
        ValueError
            If ``x`` is NaN or negative.
        """
        x = float(x)
        if not x >= 0.0:
            raise ValueError(f"LatencySketch needs a value >= 0, got {x!r}")
        self.counts[bisect.bisect_left(self._grid.edge_list, x)] += 1

    def update_many(self, values: npt.ArrayLike) -> None:
        """Add a batch of values (ms), vectorised; nothing is added if one is invalid.

        Raises
        ------
        ValueError
            If any value is NaN or negative.
        """
        arr = np.asarray(values, dtype=np.float64).ravel()
        if arr.size == 0:
            return
        if not (arr >= 0.0).all():  # False for NaN too
            raise ValueError("LatencySketch needs values >= 0 (got NaN or a negative value)")
        index = np.searchsorted(self._grid.edges, arr, side="left")
        self.counts += np.bincount(index, minlength=self.n_buckets)

    def quantile(self, q: float) -> float:
        """Estimate of the order statistic of rank ``floor(q * (n - 1))``; NaN when empty.

        Raises
        ------
        ValueError
            If ``q`` is not in ``[0, 1]``.
        """
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"q must be in [0, 1], got {q!r}")
        cumulative = np.cumsum(self.counts)
        n = int(cumulative[-1])
        if n == 0:
            return math.nan
        rank = math.floor(q * (n - 1))
        return float(self._grid.values[np.searchsorted(cumulative, rank, side="right")])
