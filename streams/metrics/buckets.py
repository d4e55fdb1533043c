"""What every fixed-bucket sketch shares: a count array that merges by addition.

Why a base: the latency sketch (:mod:`streams.metrics.sketch`, values >= 0) and the signed
quantile sketch (:mod:`streams.metrics.quantiles`) differ only in where their bucket
edges lie. Once the edges are fixed by ``(alpha, min_value, max_value)``, merging,
equality and the sparse form that travels in Avro records are the same operations on the
same int64 array, and must stay the same, since partials of both kinds are merged by the
evaluator and restored from changelogs. A subclass gives its layout (``_layout``: edges,
representative values, ``gamma``) and its default parameters.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, TypeVar

import numpy as np
import numpy.typing as npt

__all__ = ["BucketSketch", "log_powers"]

S = TypeVar("S", bound="BucketSketch")


def log_powers(
    alpha: float, min_value: float, max_value: float
) -> tuple[float, list[float], int, int]:
    """``(gamma, powers, lo, hi)``: the log grid both sketches cut their buckets from.

    ``powers`` are ``gamma**k`` built by repeated IEEE multiplication (or division) from
    ``1.0``, increasing, so a value's bucket depends only on comparisons, the same on every
    machine; ``powers[lo - 1] < min_value <= powers[lo]`` and
    ``powers[hi - 1] < max_value <= powers[hi]``.

    Raises
    ------
    ValueError
        Unless ``0 < alpha < 1`` and ``0 < min_value < max_value < inf``.
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    if not (0.0 < min_value < max_value and math.isfinite(max_value)):
        raise ValueError(
            f"need 0 < min_value < max_value < inf, got min_value={min_value!r}, "
            f"max_value={max_value!r}"
        )
    gamma = (1.0 + alpha) / (1.0 - alpha)
    ups = [1.0]
    while ups[-1] < max_value:
        ups.append(ups[-1] * gamma)
    downs = [1.0]
    while downs[-1] >= min_value:
        downs.append(downs[-1] / gamma)
    powers = downs[:0:-1] + ups  # increasing; powers[0] < min_value, powers[-1] >= max_value
    lo = bisect.bisect_left(powers, min_value)  # powers[lo - 1] < min_value <= powers[lo]
    hi = bisect.bisect_left(powers, max_value)  # powers[hi - 1] < max_value <= powers[hi]
    return gamma, powers, lo, hi


class BucketSketch:
    """``counts`` (int64, ``n_buckets``) over buckets fixed by ``(alpha, min, max)``."""

    DEFAULT_ALPHA: ClassVar[float]
    DEFAULT_MIN_VALUE: ClassVar[float]
    DEFAULT_MAX_VALUE: ClassVar[float]
    #: The subclass's layout for ``(alpha, min_value, max_value)`` (cached there).
    _make_layout: ClassVar[Callable[[float, float, float], Any]]

    __slots__ = ("_grid", "alpha", "counts", "gamma", "max_value", "min_value", "n_buckets")
    __hash__ = None  # type: ignore[assignment]  # mutable

    def __init__(
        self,
        alpha: float | None = None,
        min_value: float | None = None,
        max_value: float | None = None,
    ) -> None:
        cls = type(self)
        self.alpha = float(cls.DEFAULT_ALPHA if alpha is None else alpha)
        self.min_value = float(cls.DEFAULT_MIN_VALUE if min_value is None else min_value)
        self.max_value = float(cls.DEFAULT_MAX_VALUE if max_value is None else max_value)
        self._grid = cls._make_layout(self.alpha, self.min_value, self.max_value)
        self.gamma: float = self._grid.gamma
        self.n_buckets = int(self._grid.values.size)
        self.counts: npt.NDArray[np.int64] = np.zeros(self.n_buckets, dtype=np.int64)

    @property
    def count(self) -> int:
        """How many values were added (clamped ones included)."""
        return int(self.counts.sum())

    def params(self) -> tuple[float, float, float]:
        """``(alpha, min_value, max_value)``: sketches merge only with equal parameters."""
        return (self.alpha, self.min_value, self.max_value)

    def merge(self: S, other: S) -> None:
        """Add another sketch's counts into this one.

        Raises
        ------
        TypeError
            If ``other`` is another kind of sketch.
        ValueError
            If the two sketches have different parameters (their buckets differ).
        """
        name = type(self).__name__
        if not isinstance(other, type(self)):
            raise TypeError(f"cannot merge {type(other).__name__} into {name}")
        self._check_same(other)
        self.counts += other.counts

    def to_sparse(self) -> tuple[list[int], list[int]]:
        """The nonzero buckets as ``(indices, counts)`` (Avro ``array<int>``, ``array<long>``)."""
        index = np.flatnonzero(self.counts)
        return index.tolist(), self.counts[index].tolist()

    @classmethod
    def from_sparse(
        cls: type[S],
        indices: Sequence[int],
        counts: Sequence[int],
        alpha: float | None = None,
        min_value: float | None = None,
        max_value: float | None = None,
    ) -> S:
        """The inverse of :meth:`to_sparse`; repeated indices add up. Parameters left out
        are the class defaults.

        Raises
        ------
        ValueError
            If the lists differ in length, an index is out of range or a count is negative.
        """
        out = cls(alpha, min_value, max_value)
        index = np.asarray(indices, dtype=np.int64)
        count = np.asarray(counts, dtype=np.int64)
        if index.shape != count.shape or index.ndim != 1:
            raise ValueError("indices and counts must be flat sequences of the same length")
        if index.size and (index.min() < 0 or index.max() >= out.n_buckets):
            raise ValueError(f"bucket index out of range [0, {out.n_buckets})")
        if index.size and count.min() < 0:
            raise ValueError("bucket counts must be >= 0")
        np.add.at(out.counts, index, count)
        return out

    def _check_same(self, other: BucketSketch) -> None:
        if self.params() != other.params():
            raise ValueError(
                f"sketches with (alpha, min_value, max_value) = {other.params()} and "
                f"{self.params()} have different buckets"
            )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, type(self)):
            return NotImplemented
        return self.params() == other.params() and bool(np.array_equal(self.counts, other.counts))

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(alpha={self.alpha!r}, min_value={self.min_value!r}, "
            f"max_value={self.max_value!r}, count={self.count})"
        )
