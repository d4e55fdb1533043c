"""Sums and sketches of many segments in one pass equal one update per segment, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

from streams.metrics.exact import ExactSum
from streams.metrics.quantiles import QuantileSketch
from streams.metrics.segmented import update_segments
from streams.metrics.slices import SLICE_ALPHA, SliceStats


def values(rng: np.random.Generator, n: int, wide: bool) -> np.ndarray:
    v = rng.normal(0.0, 1.0, n)
    if wide:  # many limbs: from subnormals to 1e300
        v *= 10.0 ** rng.integers(-320, 300, n)
    return v


@pytest.mark.parametrize("wide", [False, True])
@pytest.mark.parametrize("seed", range(4))
def test_exact_sums_by_segment_are_the_sums_of_each_segment(seed: int, wide: bool) -> None:
    rng = np.random.default_rng(seed)
    n, k = 5_000, 17
    v = values(rng, n, wide)
    seg = rng.integers(0, k - 1, n)  # the last segment stays empty
    together = [ExactSum() for _ in range(k)]
    update_segments(together, v, seg)
    for i, s in enumerate(together):
        alone = ExactSum()
        alone.update_many(v[seg == i])
        assert s.to_int() == alone.to_int(), i
    assert together[-1].to_int() == 0


def test_exact_sums_by_segment_refuse_non_finite_values() -> None:
    sums = [ExactSum(), ExactSum()]
    with pytest.raises(ValueError):
        update_segments(sums, np.array([1.0, np.nan]), np.array([0, 1]))
    assert [s.to_int() for s in sums] == [0, 0]


def test_sketches_by_segment_count_what_each_sketch_would() -> None:
    rng = np.random.default_rng(7)
    v = np.concatenate([rng.lognormal(3.0, 2.0, 3_000), [np.nan, np.inf, -5.0, 0.0]])
    seg = rng.integers(0, 5, v.size)
    together = [QuantileSketch(alpha=SLICE_ALPHA) for _ in range(5)]
    skipped = QuantileSketch.update_segments(together, v, seg)
    for i, s in enumerate(together):
        alone = QuantileSketch(alpha=SLICE_ALPHA)
        assert skipped[i] == alone.update_many(v[seg == i])
        assert np.array_equal(s.counts, alone.counts), i
    with pytest.raises(ValueError):
        QuantileSketch.update_segments([QuantileSketch(), QuantileSketch(alpha=0.05)], v, seg)


def test_slices_by_segment_equal_slices_one_by_one() -> None:
    rng = np.random.default_rng(11)
    p = rng.normal(100.0, 10.0, 2_000)
    c = p + rng.normal(0.0, 3.0, 2_000)
    c[::97] = np.inf  # dropped, as one by one
    seg = rng.integers(0, 6, 2_000)
    together = [SliceStats() for _ in range(6)]
    SliceStats.add_regression_segments(together, p, c, seg)
    SliceStats.add_outputs_segments(together, c, seg, primary=False)
    for i, st in enumerate(together):
        alone = SliceStats()
        alone.add_regression(p[seg == i], c[seg == i])
        alone.add_outputs(c[seg == i], primary=False)
        assert st.to_record() == alone.to_record(), i
