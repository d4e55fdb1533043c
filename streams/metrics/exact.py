"""An exact, order-independent, mergeable sum of float64 values.

Why exact: the joiner folds pairs into partial sums in batches whose boundaries differ
between a run that was never interrupted and one that was SIGKILLed and restarted, and the
evaluator merges the partials of many partitions in whatever order they arrive. Float
addition is not associative, so an ordinary running sum would differ in its last bits
between those runs. Here the sum is kept as one integer ``N`` with ``sum == N * 2**-SCALE``:
every finite double is an integer multiple of ``2**-SCALE``, integer addition is exact and
associative, and so the result depends only on the multiset of values added, never on how
they were split into batches or in which order the batches were merged.

``SCALE`` is ``1074 + 52``: the smallest subnormal is ``2**-1074``, and ``np.frexp`` writes
it as ``0.5 * 2**-1073``, whose 53-bit integer mantissa ``2**52`` times ``2**-1126`` is that
value. The largest double needs ``1024 + 1126`` bits, so ``N`` stays a few hundred bytes
at most.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import numpy.typing as npt

__all__ = ["SCALE", "ExactSum"]

#: ``sum == N * 2**-SCALE`` for the integer ``N`` an :class:`ExactSum` holds.
SCALE = 1074 + 52

_MANTISSA = float(2**53)  # np.frexp mantissas in [0.5, 1) times this are 53-bit integers
_BIAS = SCALE - 53  # a value m * 2**(e - 53) is m << (e + _BIAS) in units of 2**-SCALE
_DENOM = 1 << SCALE
_LIMB = 32  # the batch path accumulates signed base-2**32 limbs
_LIMB_MASK = (1 << _LIMB) - 1
_CHUNK = 1 << 19  # float64 sums of 3 * _CHUNK limb pieces below 2**32 stay exact (< 2**53)
_OFFSET = 1 << 22  # > |carry| of any limb sum: 3 * _CHUNK * 2**32 / 2**32 < 2**21
_UP32, _DOWN32, _UP64, _DOWN64 = 2.0**32, 2.0**-32, 2.0**64, 2.0**-64
_DENSE_LIMBS = 4  # up to this many distinct limbs, sum with a one-hot matmul
_ROWS = np.arange(_DENSE_LIMBS)[:, None]


@lru_cache(maxsize=128)
def _offset_int(limbs: int) -> int:
    """``_OFFSET`` in every one of ``limbs`` base-2**32 digits, as one integer."""
    return int.from_bytes(np.full(limbs, _OFFSET, dtype="<u4").tobytes(), "little")


def _batch_int(values: npt.NDArray[np.float64]) -> int:
    """Exact ``sum(values) * 2**SCALE`` as an integer, for at most ``_CHUNK`` finite values.

    A value is ``m * 2**shift`` in units of ``2**-SCALE`` with ``|m| < 2**53``. With
    ``shift = 32*k + r``, ``v = m * 2**r`` (a float with an integer value below ``2**85``)
    splits exactly, by power-of-two scaling and truncation, into three signed pieces below
    ``2**32`` that belong to base-2**32 limbs ``k``, ``k+1`` and ``k+2``. The pieces are
    summed per limb in float64, exactly, because every partial sum is an integer below
    ``2**53``: by a one-hot matrix product when the batch touches few limbs (the usual
    case: values in ``[2**-18, 2**14)`` share one limb), else by ``np.bincount``. The
    limb sums are then carried once into non-overlapping 32-bit digits and read as Python
    integers with ``int.from_bytes``: no Python-level loop over values or exponents.
    """
    frac, exp = np.frexp(values)
    shift = exp + _BIAS  # >= 0 for every finite double (zero too: frexp gives exponent 0)
    limb = shift >> 5
    lo_limb = int(limb.min())
    pos = limb - lo_limb
    limbs = int(pos.max()) + 1
    v = np.ldexp(frac, (shift & 31) + 53)  # exact: a 53-bit mantissa moved left by 53 + r
    pieces = np.empty((3, v.size))  # every step below is exact (its result is representable)
    low, mid, top = pieces
    np.trunc(np.multiply(v, _DOWN64, out=top), out=top)
    rest = v - top * _UP64
    np.trunc(np.multiply(rest, _DOWN32, out=mid), out=mid)
    np.subtract(rest, mid * _UP32, out=low)
    if limbs <= _DENSE_LIMBS:
        sums = pieces @ (pos == _ROWS[:limbs]).T.astype(np.float64)
    else:
        index = pos.astype(np.intp)
        sums = np.stack([np.bincount(index, weights=p, minlength=limbs) for p in pieces])
    acc = np.zeros(limbs + 2)
    acc[:limbs] += sums[0]
    acc[1 : limbs + 1] += sums[1]
    acc[2:] += sums[2]
    iacc = acc.astype(np.int64)
    digits = (iacc & _LIMB_MASK).astype("<u4")
    carries = ((iacc >> _LIMB) + _OFFSET).astype("<u4")
    total = int.from_bytes(digits.tobytes(), "little") + (
        (int.from_bytes(carries.tobytes(), "little") - _offset_int(iacc.size)) << _LIMB
    )
    return total << (_LIMB * lo_limb)


class ExactSum:
    """Exact sum of float64 values, bit-identical whatever the batching and merge order.

    The state is one Python integer ``N`` with ``sum == N * 2**-SCALE``; :meth:`update_many`
    converts a whole numpy batch exactly with vectorised numpy arithmetic, :meth:`merge`
    adds the integers, and :meth:`get` rounds ``N * 2**-SCALE`` once, correctly, to the
    nearest double. The result therefore equals ``math.fsum`` over every value ever added,
    and two sums over the same multiset of values are equal (``==``) and serialize to the
    same bytes however they were split into batches and partials.

    NaN and infinite inputs raise ``ValueError``: they have no exact value to add. Callers
    filter them out first and count them separately (a dead-letter or error count).

    Example
    -------
    >>> import numpy as np
    >>> a, b = ExactSum(), ExactSum()
    >>> a.update_many(np.array([1e100, 1.0, -1e100]))
    >>> b.update(0.1)
    >>> a.merge(b)
    >>> a.get()
    1.1
    >>> ExactSum.from_bytes(a.to_bytes()) == a
    True
    >>> sum([1e100, 1.0, -1e100, 0.1])  # the naive float sum loses the 1.0
    0.1
    """

    SCALE = SCALE

    __slots__ = ("_n",)

    def __init__(self) -> None:
        self._n = 0

    def update(self, x: float) -> None:
        """Add one finite value exactly.

        Raises
        ------
        ValueError
            If ``x`` is NaN or infinite.
        """
        x = float(x)
        if not math.isfinite(x):
            raise ValueError(f"ExactSum cannot add a non-finite value: {x!r}")
        frac, exp = math.frexp(x)
        self._n += int(frac * _MANTISSA) << (exp + _BIAS)

    def update_many(self, values: npt.ArrayLike) -> None:
        """Add a batch of finite values exactly (vectorised; the per-batch hot path).

        ``values`` is converted to float64 first (exact for float32 and for integers below
        ``2**53``) and flattened. Nothing is added if any value is NaN or infinite.

        Raises
        ------
        ValueError
            If any value is NaN or infinite.
        """
        arr = np.asarray(values, dtype=np.float64).ravel()
        if arr.size == 0:
            return
        if not np.isfinite(arr).all():
            raise ValueError("ExactSum cannot add non-finite values (NaN or infinity)")
        total = 0
        for start in range(0, arr.size, _CHUNK):
            total += _batch_int(arr[start : start + _CHUNK])
        self._n += total

    def merge(self, other: ExactSum) -> None:
        """Add another partial sum into this one (exact, so order never matters)."""
        if not isinstance(other, ExactSum):
            raise TypeError(f"cannot merge {type(other).__name__} into ExactSum")
        self._n += other._n

    def copy(self) -> ExactSum:
        """An independent sum equal to this one: merging into either leaves the other be."""
        out = ExactSum()
        out._n = self._n
        return out

    def get(self) -> float:
        """The sum correctly rounded to the nearest double (``+0.0`` when it is zero).

        A sum beyond the double range rounds to ``inf`` or ``-inf`` with its sign, as IEEE
        round-to-nearest would: a sum that still rounds to ``±DBL_MAX`` is returned as that.
        """
        try:
            return self._n / _DENOM  # int / int true division is correctly rounded
        except OverflowError:
            return math.inf if self._n > 0 else -math.inf

    def to_int(self) -> int:
        """``N`` such that the sum is exactly ``N * 2**-SCALE`` (for JSON and debugging).

        Note that JSON readers with 64-bit or double integers (JavaScript) cannot hold it;
        prefer :meth:`to_bytes` on the wire.
        """
        return self._n

    @classmethod
    def from_int(cls, n: int) -> ExactSum:
        """The sum ``n * 2**-SCALE``; the inverse of :meth:`to_int`."""
        if not isinstance(n, int) or isinstance(n, bool):
            raise TypeError(f"ExactSum.from_int needs an int, not {type(n).__name__}")
        out = cls()
        out._n = n
        return out

    def to_bytes(self) -> bytes:
        """``N`` as minimal-length signed big-endian two's complement (``b"\\x00"`` for 0).

        This is the byte layout of an Avro ``decimal`` with scale ``SCALE``, so a partial
        can carry it in a ``bytes`` field.
        """
        n = self._n
        length = ((n if n >= 0 else ~n).bit_length() + 8) // 8
        return n.to_bytes(length, "big", signed=True)

    @classmethod
    def from_bytes(cls, data: bytes) -> ExactSum:
        """The inverse of :meth:`to_bytes` (``b""`` is read as the empty sum)."""
        return cls.from_int(int.from_bytes(data, "big", signed=True))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ExactSum):
            return NotImplemented
        return self._n == other._n

    def __repr__(self) -> str:
        return f"ExactSum({self.get()!r})"
