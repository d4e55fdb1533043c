"""ExactSum against exact references: ``fractions.Fraction`` and ``math.fsum``.

Tolerance: none. ``get()`` must equal the correctly rounded exact sum bit for bit, and the
state must not depend on batch boundaries or merge order.
"""

from __future__ import annotations

import math
import pickle
import struct
import sys
from fractions import Fraction

import numpy as np
import pytest

from streams.metrics import exact
from streams.metrics.exact import SCALE, ExactSum

DBL_MAX = sys.float_info.max
TINY = 5e-324  # the smallest subnormal, 2**-1074


def exact_sum(values: np.ndarray | list[float]) -> Fraction:
    return sum((Fraction(v) for v in np.asarray(values, dtype=np.float64).tolist()), Fraction(0))


def bits(x: float) -> bytes:
    return struct.pack("<d", x)


def wide_values(
    rng: np.random.Generator, n: int, lo: int = -1074, hi: int = 1000, extras: bool = True
) -> np.ndarray:
    """Signed values with exponents drawn uniformly from [lo, hi] (+ zeros and subnormals)."""
    mant = rng.uniform(-2.0, 2.0, n)
    x = np.ldexp(mant, rng.integers(lo, hi + 1, n))
    if not extras:
        return x
    x[rng.random(n) < 0.03] = 0.0
    sub = rng.random(n) < 0.05
    x[sub] = rng.integers(-(2**52), 2**52, int(sub.sum())) * TINY  # subnormals
    return x


def summed(values: np.ndarray) -> ExactSum:
    s = ExactSum()
    s.update_many(values)
    return s


@pytest.mark.parametrize("seed", range(12))
def test_matches_fraction_and_fsum_on_wide_data(seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = wide_values(rng, int(rng.integers(1, 4000)))
    ref = exact_sum(x)
    s = summed(x)
    assert Fraction(s.to_int(), 2**SCALE) == ref  # the state is the exact sum
    assert bits(s.get()) == bits(float(ref))  # and get() rounds it correctly
    assert bits(s.get()) == bits(math.fsum(x.tolist()))


@pytest.mark.parametrize(
    ("lo", "hi"),
    [(-5, 5), (-30, 40), (-1074, -1000), (900, 1000), (-60, -20), (-1074, 1023)],
)
def test_matches_fraction_in_exponent_bands(lo: int, hi: int) -> None:
    # narrow bands take the one-hot (few limbs) path, wide ones the bincount path
    rng = np.random.default_rng([lo + 1074, hi + 1074])
    x = wide_values(rng, 3000, lo, hi, extras=False)
    s = summed(x)
    assert Fraction(s.to_int(), 2**SCALE) == exact_sum(x)
    assert bits(s.get()) == bits(float(exact_sum(x)))


def test_cancellation_and_extremes() -> None:
    cases: list[list[float]] = [
        [1e100, 1.0, -1e100],
        [DBL_MAX, -DBL_MAX, TINY],
        [TINY, TINY, -TINY, 2.2250738585072014e-308, -2.225073858507201e-308],
        [1e308, 1e308, -1e308, -1e308, 3.0],  # fsum overflows in between; we do not
        [0.1] * 10,
        [-0.0, 0.0, -0.0],
        [2.0**-1074 * (2**53 - 1)] * 7,
        [1.0, 2.0**-53, 2.0**-53],  # double rounding trap: exact 1 + 2**-52
    ]
    for values in cases:
        ref = float(exact_sum(values))
        s = summed(np.array(values))
        assert bits(s.get()) == bits(ref + 0.0), values  # a zero sum is +0.0
        t = ExactSum()
        for v in values:
            t.update(v)
        assert t == s, values


def test_overflow_rounds_like_ieee() -> None:
    half_ulp = 2.0**970  # half an ulp of DBL_MAX
    assert summed(np.array([DBL_MAX, half_ulp / 2])).get() == DBL_MAX  # rounds down
    assert summed(np.array([DBL_MAX, half_ulp])).get() == math.inf  # tie to even: 2**1024
    assert summed(np.array([DBL_MAX, DBL_MAX])).get() == math.inf
    assert summed(np.array([-DBL_MAX, -DBL_MAX])).get() == -math.inf
    big = summed(np.array([DBL_MAX, DBL_MAX, -DBL_MAX]))
    assert big.get() == DBL_MAX  # the state never overflowed


@pytest.mark.parametrize("seed", range(8))
def test_order_and_split_independent(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    x = wide_values(rng, 5000, -80, 80, extras=False) if seed % 2 else wide_values(rng, 5000)
    whole = summed(x)

    shuffled = x[rng.permutation(x.size)]
    cuts = np.sort(rng.integers(0, x.size, int(rng.integers(1, 40))))
    parts = []
    for chunk in np.split(shuffled, cuts):  # includes empty and tiny chunks
        p = ExactSum()
        if chunk.size == 1:
            p.update(float(chunk[0]))  # the scalar path must agree with the batch path
        else:
            p.update_many(chunk)
        parts.append(p)
    merged = ExactSum()
    for i in rng.permutation(len(parts)):
        merged.merge(parts[i])

    assert merged == whole
    assert merged.to_bytes() == whole.to_bytes()
    assert bits(merged.get()) == bits(whole.get())


def test_batches_larger_than_a_chunk() -> None:
    # the worst case for the float64 limb sums: many maximal mantissas in one limb
    worst = float(np.nextafter(2.0**32, 0.0))
    n = exact._CHUNK + 1234
    for value in (worst, -worst, 2.0**-1074 * (2**52 - 1), 1.0 - 2.0**-53):
        s = summed(np.full(n, value))
        assert Fraction(s.to_int(), 2**SCALE) == Fraction(value) * n


def test_accepts_other_dtypes_and_shapes() -> None:
    f32 = np.array([[0.1, 0.2], [0.3, 1e-40]], dtype=np.float32)  # 1e-40 is subnormal f32
    assert summed(f32) == summed(f32.astype(np.float64).ravel())
    assert summed(np.array([1, 2, 3])).get() == 6.0
    s = ExactSum()
    s.update_many([0.5, 0.25])
    s.update_many(np.array([]))
    assert s.get() == 0.75


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_raises_and_adds_nothing(bad: float) -> None:
    s = summed(np.array([1.0, 2.0]))
    before = s.to_bytes()
    with pytest.raises(ValueError):
        s.update(bad)
    with pytest.raises(ValueError):
        s.update_many(np.array([3.0, bad, 4.0]))
    assert s.to_bytes() == before


def test_bytes_round_trip_and_minimal_length() -> None:
    assert ExactSum().to_bytes() == b"\x00"
    assert ExactSum.from_bytes(b"") == ExactSum() == ExactSum.from_bytes(b"\x00")
    for n in (0, 1, -1, 127, 128, -128, -129, 255, 256, 2**2150, -(2**2150), 12345):
        s = ExactSum.from_int(n)
        data = s.to_bytes()
        assert ExactSum.from_bytes(data).to_int() == n
        assert len(data) == ((n if n >= 0 else ~n).bit_length() + 8) // 8
        if len(data) > 1:  # no redundant sign byte
            assert not (data[0] == 0x00 and data[1] < 0x80)
            assert not (data[0] == 0xFF and data[1] >= 0x80)
    rng = np.random.default_rng(7)
    s = summed(wide_values(rng, 1000))
    assert ExactSum.from_bytes(s.to_bytes()) == s
    assert ExactSum.from_int(s.to_int()) == s
    assert pickle.loads(pickle.dumps(s)) == s


def test_copy_is_equal_and_independent() -> None:
    s = summed(wide_values(np.random.default_rng(8), 100))
    before = s.to_int()
    c = s.copy()
    assert c == s and c is not s and c.to_bytes() == s.to_bytes()
    c.update(1.0)
    assert s.to_int() == before  # adding to the copy leaves the original be
    copied = c.to_int()
    s.merge(ExactSum.from_int(5))
    assert c.to_int() == copied  # and the other way round


def test_protocol_errors() -> None:
    s = ExactSum()
    with pytest.raises(TypeError):
        s.merge(1.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        ExactSum.from_int(1.5)  # type: ignore[arg-type]
    assert s != 0.0
    assert repr(summed(np.array([1.5]))) == "ExactSum(1.5)"
