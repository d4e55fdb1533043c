"""Feature and output profiles: QuantileSketch against numpy, CategoryCounts against Counter.

Tolerances and why:

* Quantiles: ``|sketch.quantile(q) - x| <= alpha * (1 + 1e-12) * |x|`` where ``x`` is
  ``np.quantile(values, q, method="lower")`` (the order statistic of rank
  ``floor(q * (n - 1))``, the sketch's rank rule): ``alpha`` is the sketch's guarantee,
  1e-12 relative slack covers float rounding of the boundaries. When ``|x| < min_value``
  the sketch reports exactly ``0.0`` (absolute error below ``min_value``), and beyond
  ``max_value`` exactly ``+-max_value``.
* ``cdf`` is exact (``==``) at bucket edges against ``np.mean(values <= edge)``.
* Category counts are exact: ``==`` against ``collections.Counter``.
* Merges, batch splits, scalar against vectorised updates and round trips: identical
  (``==`` and identical sparse/record forms), never approximately equal; that is what
  makes partials bit-identical across batchings, restarts and merge orders.
"""

from __future__ import annotations

import doctest
import itertools
import math
import pickle
from collections import Counter
from functools import lru_cache
from types import ModuleType

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.metrics import categories, quantiles
from streams.metrics.categories import CategoryCounts
from streams.metrics.quantiles import QuantileSketch

N = 50_000
QUANTILES = np.concatenate([[0.001, 0.01, 0.05, 0.5, 0.95, 0.99, 0.999], np.linspace(0, 1, 201)])


def sketch_of(values: np.ndarray, **params: float) -> QuantileSketch:
    s = QuantileSketch(**params)
    assert s.update_many(values) == 0
    return s


@lru_cache(maxsize=1)  # read-only: built once for every test
def datasets() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(2025)
    signs = rng.choice([-1.0, 1.0], N)
    with_zeros = rng.normal(0.0, 3.0, N)
    with_zeros[rng.random(N) < 0.3] = 0.0
    return {
        "normal": rng.normal(0.0, 1.0, N),
        "negative": rng.normal(-50.0, 10.0, N) - 30.0,  # all below zero
        "mixed_heavy": rng.standard_t(2.0, N) * 1e3,  # both signs, heavy tails
        "zeros": with_zeros,  # 30% exact zeros, then both signs
        "decades": signs * 10.0 ** rng.uniform(-8.5, 14.5, N),  # 23 decades each side
        "lognormal": rng.lognormal(3.0, 1.0, N),
    }


def assert_reported(s: QuantileSketch, estimate: float, exact: float) -> None:
    """The sketch's guarantee for one value ``exact`` reported as ``estimate``."""
    if abs(exact) < s.min_value:
        assert estimate == 0.0, (estimate, exact)
    elif abs(exact) > s.max_value:
        assert estimate == math.copysign(s.max_value, exact), (estimate, exact)
    else:
        assert abs(estimate - exact) <= s.alpha * (1 + 1e-12) * abs(exact), (estimate, exact)


@pytest.mark.parametrize("name", list(datasets()))
@pytest.mark.parametrize("alpha", [0.01, 0.02, 0.005])
def test_quantiles_within_relative_error_of_numpy(name: str, alpha: float) -> None:
    values = datasets()[name]
    s = sketch_of(values, alpha=alpha)
    assert s.count == values.size
    exact = np.quantile(values, QUANTILES, method="lower")
    for q, x in zip(QUANTILES, exact, strict=True):
        assert_reported(s, s.quantile(float(q)), float(x))


def test_zero_bucket_and_overflow() -> None:
    s = QuantileSketch()
    tiny = math.nextafter(s.min_value, 0.0)
    inside = [s.min_value, -s.min_value, s.max_value, -s.max_value]
    zeros = [0.0, -0.0, tiny, -tiny, 1e-300, -5e-324]
    outside = [2e15, -2e15, 1.7e308, -1.7e308]
    s.update_many(np.array(inside + zeros + outside))
    assert (s.zeros, s.overflow, s.count) == (len(zeros), len(outside), 14)
    for x in inside + zeros + outside:
        one = QuantileSketch()
        assert one.update(x)
        assert_reported(one, one.quantile(0.5), x)
    assert s.quantile(0.0) == -s.max_value and s.quantile(1.0) == s.max_value


def test_bucket_boundaries_keep_the_guarantee_on_both_sides() -> None:
    s = QuantileSketch()
    edges = s.edges
    xs = np.concatenate([edges, np.nextafter(edges, -np.inf), np.nextafter(edges, np.inf)])
    xs = xs[np.abs(xs) <= s.max_value]
    # every value is reported within its guarantee by the bucket it lands in
    reported = s.values[np.searchsorted(edges, xs, side="left")]
    for estimate, x in zip(reported.tolist(), xs.tolist(), strict=True):
        assert_reported(s, estimate, x)
    # and the scalar path puts each of them in the same bucket as the batch path
    scalar = QuantileSketch()
    for x in xs.tolist():
        assert scalar.update(x)
    assert scalar == sketch_of(xs)


def test_layout_is_symmetric_and_its_memory_fixed() -> None:
    s = QuantileSketch()
    assert (s.alpha, s.min_value, s.max_value) == (0.01, 1e-9, 1e15)
    assert s.n_buckets == QuantileSketch.BUCKETS == 5531 == s.counts.size
    assert s.counts.dtype == np.int64 and s.counts.nbytes == 44_248  # the documented figure
    assert bool(np.all(np.diff(s.edges) > 0))
    assert np.array_equal(s.values, -s.values[::-1])  # negative side mirrors the positive
    gamma = (1 + s.alpha) / (1 - s.alpha)
    assert s.gamma == gamma
    per_side = (s.n_buckets - 3) // 2
    assert per_side in (math.ceil(math.log(1e24, gamma)), math.ceil(math.log(1e24, gamma)) + 1)
    s.update_many(datasets()["decades"])
    assert s.counts.nbytes == 44_248  # whatever the traffic
    assert not s.edges.flags.writeable and not s.values.flags.writeable
    for bad in ({"alpha": 0.0}, {"alpha": 1.0}, {"min_value": 0.0}, {"max_value": 1e-10}):
        with pytest.raises(ValueError):
            QuantileSketch(**bad)
    with pytest.raises(ValueError):
        QuantileSketch(max_value=math.inf)


def test_cdf_is_exact_at_edges() -> None:
    values = datasets()["zeros"]
    s = sketch_of(values)
    for edge in [*s.edges[:: len(s.edges) // 300].tolist(), 0.0, -1.0, 1.0]:
        at_edge = s.edges[np.searchsorted(s.edges, edge, side="left")]
        assert s.cdf(at_edge) == np.mean(values <= at_edge)
        # between edges it is an upper bound, off by at most one bucket's share
        share = s.counts[np.searchsorted(s.edges, edge, side="left")] / s.count
        assert 0.0 <= s.cdf(edge) - np.mean(values <= edge) <= share
    assert math.isnan(QuantileSketch().cdf(1.0)) and math.isnan(s.cdf(math.nan))
    assert s.cdf(math.inf) == 1.0 and s.cdf(-math.inf) == 0.0


@pytest.mark.parametrize("seed", range(3))
def test_merge_of_random_split_in_random_order_equals_sketch_of_all(seed: int) -> None:
    rng = np.random.default_rng(seed)
    values = datasets()["decades"]
    whole = sketch_of(values)
    cuts = np.sort(rng.integers(0, values.size, int(rng.integers(1, 30))))
    parts = [sketch_of(chunk) for chunk in np.split(rng.permutation(values), cuts)]
    merged = QuantileSketch()
    for i in rng.permutation(len(parts)):
        merged.merge(parts[i])
    assert merged == whole
    assert merged.to_sparse() == whole.to_sparse()


def test_non_finite_values_never_enter() -> None:
    s = sketch_of(np.array([1.0, -2.0]))
    assert s.update(math.nan) is False
    assert s.update(math.inf) is False
    assert s.update(-math.inf) is False
    assert s.update_many(np.array([3.0, math.nan, math.inf, -math.inf, -4.0])) == 3
    assert s.update_many(np.array([math.nan])) == 1
    assert s.update_many(np.array([])) == 0
    assert s == sketch_of(np.array([1.0, -2.0, 3.0, -4.0]))


def test_sparse_round_trip_and_bad_input() -> None:
    s = sketch_of(datasets()["mixed_heavy"])
    indices, counts = s.to_sparse()
    assert all(type(i) is int for i in indices + counts)
    assert 0 not in counts
    assert QuantileSketch.from_sparse(indices, counts) == s
    assert QuantileSketch.from_sparse([], []) == QuantileSketch()
    assert pickle.loads(pickle.dumps(s)) == s
    t = sketch_of(np.array([-1.0, 0.0, 3.0]), alpha=0.05, min_value=1e-3, max_value=1e3)
    indices, counts = t.to_sparse()
    assert QuantileSketch.from_sparse(indices, counts, 0.05, 1e-3, 1e3) == t
    assert QuantileSketch.from_sparse(*t.to_sparse(), alpha=0.05) != t  # other parameters
    for bad in (([0, 1], [1]), ([QuantileSketch.BUCKETS], [1]), ([-1], [1]), ([3], [-1])):
        with pytest.raises(ValueError):
            QuantileSketch.from_sparse(*bad)


def test_merge_rejects_other_parameters_and_copy_is_independent() -> None:
    with pytest.raises(ValueError):
        QuantileSketch().merge(QuantileSketch(alpha=0.02))
    with pytest.raises(ValueError):
        QuantileSketch().merge(QuantileSketch(min_value=1e-6))
    with pytest.raises(TypeError):
        QuantileSketch().merge([1, 2])  # type: ignore[arg-type]
    s = sketch_of(np.array([1.0, 2.0]))
    c = s.copy()
    c.update(3.0)
    assert (s.count, c.count) == (2, 3)
    assert QuantileSketch() != "QuantileSketch"


def test_quantile_edge_cases() -> None:
    assert math.isnan(QuantileSketch().quantile(0.5))
    with pytest.raises(ValueError):
        QuantileSketch().quantile_bucket(0.5)
    s = sketch_of(np.array([-10.0]))
    for q in (0.0, 0.5, 1.0):
        assert_reported(s, s.quantile(q), -10.0)
    for q in (-0.1, 1.1, math.nan):
        with pytest.raises(ValueError):
            s.quantile(q)


# -- hypothesis: identical partials however the input is cut, ordered and merged ---------

any_float = st.floats(width=64)  # NaN, +-inf, +-0.0, subnormals, huge values
finite = st.floats(allow_nan=False, allow_infinity=False)


@settings(max_examples=150, deadline=None)
@given(
    values=st.lists(any_float, max_size=120),
    cuts=st.lists(st.integers(0, 120), max_size=8),
    order=st.randoms(use_true_random=False),
)
def test_any_split_and_merge_order_give_identical_sketches(
    values: list[float], cuts: list[int], order: object
) -> None:
    arr = np.array(values, dtype=np.float64)
    whole = QuantileSketch()
    skipped = whole.update_many(arr)
    assert skipped == int(np.count_nonzero(~np.isfinite(arr)))
    assert whole.count == arr.size - skipped
    parts = []
    for chunk in np.split(arr, sorted(c for c in cuts if c <= arr.size)):
        part = QuantileSketch()
        part.update_many(chunk)
        parts.append(part)
    order.shuffle(parts)  # type: ignore[attr-defined]
    merged = QuantileSketch()
    for part in parts:
        merged.merge(part)
    assert merged == whole
    assert merged.to_sparse() == whole.to_sparse()
    # restored from the wire and merged again: still the same
    assert QuantileSketch.from_sparse(*merged.to_sparse()) == whole


@settings(max_examples=150, deadline=None)
@given(values=st.lists(any_float, max_size=80))
def test_scalar_updates_equal_vectorised_update(values: list[float]) -> None:
    scalar = QuantileSketch()
    added = sum(scalar.update(v) for v in values)
    batch = QuantileSketch()
    assert batch.update_many(np.array(values, dtype=np.float64)) == len(values) - added
    assert scalar == batch


@pytest.mark.parametrize(
    ("alpha", "lo", "hi"), [(0.01, 1e-9, 1e15), (0.05, 1e-9, 1e15), (0.02, 1e-3, 1e6)]
)
def test_batch_placement_is_binary_search_over_the_edges(
    alpha: float, lo: float, hi: float
) -> None:
    """The bit-prefix table plus step-up places every value where np.searchsorted does,
    on the edges themselves, their float neighbours, both signs and the extremes."""
    s = QuantileSketch(alpha, lo, hi)
    e = np.asarray(s.edges)
    rng = np.random.default_rng(7)
    tiny, big = 5e-324, np.finfo(np.float64).max
    probes = np.concatenate(
        [
            e,
            np.nextafter(e, np.inf),
            np.nextafter(e, -np.inf),
            -e,
            rng.normal(0.0, 1e3, 20_000),
            rng.standard_cauchy(20_000) * 1e10,
            [0.0, -0.0, tiny, -tiny, big, -big, 2.2250738585072014e-308, lo, -lo, hi, -hi],
        ]
    )
    expected = np.bincount(np.searchsorted(e, probes, side="left"), minlength=s.n_buckets)
    assert s.update_many(probes) == 0
    assert np.array_equal(s.counts, expected)


@settings(max_examples=100, deadline=None)
@given(
    rows=st.integers(1, 5),
    cols=st.integers(1, 40),
    data=st.data(),
)
def test_update_rows_equals_one_update_many_per_row(
    rows: int, cols: int, data: st.DataObject
) -> None:
    """Rows counted over their own bucket spans (or, with a NaN, by segment) give the
    same sketches and skipped counts as one update_many per row."""
    values = data.draw(st.sampled_from([finite, any_float]))  # the span path, or NaN's
    table = np.array(
        data.draw(
            st.lists(st.lists(values, min_size=cols, max_size=cols), min_size=rows, max_size=rows)
        ),
        dtype=np.float64,
    )
    by_row = [QuantileSketch() for _ in range(rows)]
    skipped = [s.update_many(r) for s, r in zip(by_row, table, strict=True)]
    together = [QuantileSketch() for _ in range(rows)]
    assert QuantileSketch.update_rows(together, table) == skipped
    assert together == by_row


@settings(max_examples=100, deadline=None)
@given(values=st.lists(finite, min_size=1, max_size=80), q=st.floats(0.0, 1.0))
def test_any_finite_values_quantile_guarantee(values: list[float], q: float) -> None:
    s = QuantileSketch()
    assert s.update_many(np.array(values)) == 0
    exact = float(np.quantile(np.array(values), q, method="lower"))
    assert_reported(s, s.quantile(q), exact)


# -- CategoryCounts -------------------------------------------------------------------------


def test_first_cap_distinct_values_keep_their_counts() -> None:
    c = CategoryCounts(cap=3)
    c.update_many(["a", "b", "a", "c", "d", "a", "d", "b"])
    c.update("e")
    c.update("c")
    assert c.counts == {"a": 3, "b": 2, "c": 2}
    assert (c.overflow, c.count) == (3, 10)  # d, d, e


def test_counts_are_exact_below_the_cap() -> None:
    rng = np.random.default_rng(3)
    words = [f"w{i}" for i in rng.zipf(1.3, 20_000) % 40]
    c = CategoryCounts()
    for start in range(0, len(words), 997):
        c.update_many(words[start : start + 997])
    assert c.counts == dict(Counter(words)) and c.overflow == 0


def test_merged_recaps_by_count_then_value() -> None:
    a, b = CategoryCounts(cap=3), CategoryCounts(cap=3)
    a.update_many(["x"] * 5 + ["b"] * 2 + ["a"] * 2)
    b.update_many(["y"] * 4 + ["c"] * 2 + ["z"] * 1)
    a.update("spill")  # cap reached: overflow
    m = CategoryCounts.merged([a, b])
    assert m.counts == {"x": 5, "y": 4, "a": 2}  # a, b, c tie at 2: "a" first
    assert m.overflow == 1 + 2 + 2 + 1
    assert m.count == a.count + b.count
    assert CategoryCounts.merged([]) == CategoryCounts()
    assert CategoryCounts.merged([], cap=5) == CategoryCounts(cap=5)
    assert CategoryCounts.merged([a, b], cap=10).counts == {
        "x": 5, "y": 4, "a": 2, "b": 2, "c": 2, "z": 1
    }  # fmt: skip
    with pytest.raises(ValueError):
        CategoryCounts.merged([a, CategoryCounts(cap=4)])
    with pytest.raises(TypeError):
        CategoryCounts.merged([a, {"x": 1}])  # type: ignore[list-item]


def test_record_round_trip_and_bad_records() -> None:
    c = CategoryCounts(cap=4)
    c.update_many(["zeta", "alpha", "zeta", "mid", "q", "r"])
    rec = c.to_record()
    assert list(rec["counts"]) == ["alpha", "mid", "q", "zeta"]  # sorted: canonical bytes
    assert rec == {"counts": {"alpha": 1, "mid": 1, "q": 1, "zeta": 2}, "overflow": 1}
    assert CategoryCounts.from_record(rec, cap=4) == c
    assert CategoryCounts.from_record(rec, cap=5) != c  # the cap is a parameter
    assert CategoryCounts.from_record({"counts": {"a": 0}, "overflow": 0}) == CategoryCounts()
    assert pickle.loads(pickle.dumps(c)) == c
    for bad in (
        {"counts": {"a": -1}, "overflow": 0},
        {"counts": {"a": 1.5}, "overflow": 0},
        {"counts": {}, "overflow": -2},
        {"counts": {"a": True}, "overflow": 0},
        {"counts": {"a": 1, "b": 1}, "overflow": 0},  # over cap=1
    ):
        with pytest.raises(ValueError):
            CategoryCounts.from_record(bad, cap=1)
    for cap in (0, -1, 2.0, True):
        with pytest.raises(ValueError):
            CategoryCounts(cap=cap)  # type: ignore[arg-type]


words = st.lists(st.sampled_from([f"v{i}" for i in range(12)]), max_size=150)


@settings(max_examples=150, deadline=None)
@given(values=words, cuts=st.lists(st.integers(0, 150), max_size=8), cap=st.integers(1, 14))
def test_category_batch_split_gives_identical_sketch(
    values: list[str], cuts: list[int], cap: int
) -> None:
    one_by_one = CategoryCounts(cap)
    for v in values:
        one_by_one.update(v)
    batched = CategoryCounts(cap)
    bounds = [0, *sorted(c for c in cuts if c <= len(values)), len(values)]
    for lo, hi in itertools.pairwise(bounds):
        batched.update_many(values[lo:hi])
    assert batched == one_by_one
    assert batched.to_record() == one_by_one.to_record()
    assert batched.count == len(values)


@settings(max_examples=150, deadline=None)
@given(
    streams=st.lists(words, min_size=1, max_size=6),
    cap=st.integers(1, 14),
    order=st.randoms(use_true_random=False),
)
def test_category_merged_is_independent_of_order(
    streams: list[list[str]], cap: int, order: object
) -> None:
    sketches = []
    for values in streams:
        c = CategoryCounts(cap)
        c.update_many(values)
        sketches.append(c)
    first = CategoryCounts.merged(sketches)
    order.shuffle(sketches)  # type: ignore[attr-defined]
    again = CategoryCounts.merged(sketches)
    assert again == first and again.to_record() == first.to_record()
    assert first.count == sum(len(v) for v in streams)
    assert len(first.counts) <= cap
    everything = Counter(v for values in streams for v in values)
    if all(s.overflow == 0 for s in sketches) and len(everything) <= cap:
        assert first.counts == dict(everything) and first.overflow == 0


@pytest.mark.parametrize("module", [quantiles, categories], ids=lambda m: m.__name__)
def test_doctests(module: ModuleType) -> None:
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0
