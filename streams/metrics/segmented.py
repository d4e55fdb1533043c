"""Many exact sums at once: :class:`~streams.metrics.exact.ExactSum` by segment.

Folding a batch into 30 slices with one :meth:`ExactSum.update_many` each costs 30 times
the fixed cost of a vectorised pass (about 25 us), whatever the batch holds. Here every
value carries the index of the sum it belongs to, and one pass sums them all: the limb
pieces of :func:`streams.metrics.exact._batch_int` are added per (segment, limb) by one
``np.bincount``, exactly for the same reason (every partial sum is an integer below
``2**53``), so each segment's result is the very integer ``update_many`` of its values
alone would add, bit for bit.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from streams.metrics.exact import (
    _BIAS,
    _CHUNK,
    _DOWN32,
    _DOWN64,
    _LIMB,
    _LIMB_MASK,
    _OFFSET,
    _UP32,
    _UP64,
    ExactSum,
    _offset_int,
)

__all__ = ["update_segments"]


def _batch_ints(values: npt.NDArray[np.float64], seg: npt.NDArray[np.intp], n: int) -> list[int]:
    """:func:`_batch_int` of each segment at once: ``seg[i]`` (in ``[0, n)``) says which
    sum ``values[i]`` goes to. The limb pieces are summed per (segment, limb) by one
    ``np.bincount``, exactly for the same reason, so each result is the very integer
    :func:`_batch_int` gives for that segment's values alone."""
    frac, exp = np.frexp(values)
    shift = exp + _BIAS
    limb = shift >> 5
    lo_limb = int(limb.min())
    pos = limb - lo_limb
    limbs = int(pos.max()) + 1
    v = np.ldexp(frac, (shift & 31) + 53)
    pieces = np.empty((3, v.size))
    low, mid, top = pieces
    np.trunc(np.multiply(v, _DOWN64, out=top), out=top)
    rest = v - top * _UP64
    np.trunc(np.multiply(rest, _DOWN32, out=mid), out=mid)
    np.subtract(rest, mid * _UP32, out=low)
    index = seg * limbs + pos
    sums = [np.bincount(index, weights=p, minlength=n * limbs).reshape(n, limbs) for p in pieces]
    acc = np.zeros((n, limbs + 2))
    acc[:, :limbs] += sums[0]
    acc[:, 1 : limbs + 1] += sums[1]
    acc[:, 2:] += sums[2]
    iacc = acc.astype(np.int64)
    digits = (iacc & _LIMB_MASK).astype("<u4")
    carries = ((iacc >> _LIMB) + _OFFSET).astype("<u4")
    offset = _offset_int(limbs + 2)
    shift_out = _LIMB * lo_limb
    return [
        (
            int.from_bytes(d.tobytes(), "little")
            + ((int.from_bytes(c.tobytes(), "little") - offset) << _LIMB)
        )
        << shift_out
        for d, c in zip(digits, carries, strict=True)
    ]


def update_segments(
    sums: list[ExactSum], values: npt.NDArray[np.float64], seg: npt.NDArray[np.intp]
) -> None:
    """``sums[k].update_many(values[seg == k])`` for every k, in one vectorised pass.

    >>> a, b = ExactSum(), ExactSum()
    >>> update_segments([a, b], np.array([1e100, 0.5, 1.0, -1e100]), np.array([0, 1, 0, 0]))
    >>> a.get(), b.get()
    (1.0, 0.5)

    Raises
    ------
    ValueError
        If any value is NaN or infinite (then nothing is added anywhere).
    """
    arr = np.asarray(values, dtype=np.float64).ravel()
    if arr.size == 0:
        return
    if not np.isfinite(arr).all():
        raise ValueError("ExactSum cannot add non-finite values (NaN or infinity)")
    seg = np.asarray(seg, dtype=np.intp).ravel()
    totals = [0] * len(sums)
    for start in range(0, arr.size, _CHUNK):
        part = _batch_ints(arr[start : start + _CHUNK], seg[start : start + _CHUNK], len(sums))
        totals = [a + b for a, b in zip(totals, part, strict=True)]
    for s, total in zip(sums, totals, strict=True):
        if total:
            s.merge(ExactSum.from_int(total))
