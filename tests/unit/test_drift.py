"""Drift statistics from sketches against scipy and numpy on the raw samples.

Tolerances and why:

* PSI: 1e-9 absolute against a direct numpy PSI on the raw samples binned with the same
  edges (:func:`psi_edges`). The sketch's bins are whole buckets, so both sides count the
  same values in each bin; only float summation order differs. Against PSI on the *exact*
  numpy deciles (bins moved by up to one bucket, relative width 2 alpha): 10% + 1e-3.
* KS: within 0.01 of ``scipy.stats.ks_2samp(...).statistic`` on 100k against 100k
  continuous samples (the issue's bound). Why it holds: the sketch knows both empirical
  CDFs exactly at every bucket edge, so it can only miss how far the gap moves inside one
  bucket, and near the maximum gap the two CDFs move together. It is also checked
  bracket-exactly: ``ks <= D <= ks_upper`` (1e-12 slack for float division), on any data.
* ks_pvalue: 1e-12 against ``scipy.stats.kstwobign.sf`` at the same corrected argument
  (same function, different series); 0.03 against ``ks_2samp``'s exact p-value from 100
  values a side (the asymptotic approximation's own error, measured in the docstring);
  0.002 against ``ks_2samp(method="asymp")`` at 100k a side.
* JS: 1e-9 against ``scipy.spatial.distance.jensenshannon(p, q, base=2)`` on the same
  counts (overflow as one more category); both are the distance, sqrt of the divergence.
"""

from __future__ import annotations

import dataclasses
import doctest
import math
from functools import lru_cache

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from scipy.spatial.distance import jensenshannon

from streams.metrics import drift
from streams.metrics.categories import CategoryCounts
from streams.metrics.drift import (
    CategoricalDrift,
    NumericDrift,
    categorical_drift,
    js_distance,
    ks_pvalue,
    ks_statistic,
    numeric_drift,
    psi,
    psi_edges,
)
from streams.metrics.quantiles import QuantileSketch

N = 100_000


def sketch_of(values: np.ndarray, **params: float) -> QuantileSketch:
    s = QuantileSketch(**params)
    assert s.update_many(values) == 0
    return s


@lru_cache(maxsize=1)  # read-only: built once for every test
def pairs() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(reference, current) samples, continuous, with and without drift."""
    rng = np.random.default_rng(99)
    return {
        "same": (rng.normal(0, 1, N), rng.normal(0, 1, N)),
        "shift": (rng.normal(0, 1, N), rng.normal(0.1, 1, N)),
        "scale": (rng.normal(0, 1, N), rng.normal(0, 1.3, N)),
        "negative": (rng.normal(-80, 10, N), rng.normal(-78, 10, N)),
        "mixed_heavy": (rng.standard_t(3, N) * 100, rng.standard_t(3, N) * 110 + 5),
        "lognormal": (rng.lognormal(3, 1, N), rng.lognormal(3.1, 0.9, N)),
        "offset_narrow": (rng.normal(1000, 50, N), rng.normal(1005, 50, N)),
        "big_drift": (rng.normal(0, 1, N), rng.normal(3, 0.5, N)),  # empty bins: epsilon
    }


def numpy_psi(ref: np.ndarray, cur: np.ndarray, edges: np.ndarray, eps: float = 1e-4) -> float:
    """PSI the textbook way on raw samples: bins (-inf, e0], (e0, e1], ..., (e_last, inf)."""
    k = edges.size + 1
    r = np.bincount(np.searchsorted(edges, ref, side="left"), minlength=k) / ref.size
    c = np.bincount(np.searchsorted(edges, cur, side="left"), minlength=k) / cur.size
    r = np.where(r == 0, eps, r)
    c = np.where(c == 0, eps, c)
    return float(np.sum((c - r) * np.log(c / r)))


@pytest.mark.parametrize("name", list(pairs()))
def test_psi_equals_numpy_on_the_same_bins(name: str) -> None:
    ref, cur = pairs()[name]
    sr, sc = sketch_of(ref), sketch_of(cur)
    edges = psi_edges(sr)
    assert 1 <= edges.size <= 9 and bool(np.all(np.diff(edges) > 0))
    assert abs(psi(sr, sc) - numpy_psi(ref, cur, edges)) <= 1e-9
    four = numpy_psi(ref, cur, psi_edges(sr, 4), eps=1e-3)
    assert abs(psi(sr, sc, bins=4, epsilon=1e-3) - four) <= 1e-9
    if edges.size == 9:  # ten bins: close to PSI on the exact deciles of the raw reference
        exact = numpy_psi(ref, cur, np.quantile(ref, np.arange(1, 10) / 10))
        assert abs(psi(sr, sc) - exact) <= 0.1 * exact + 1e-3


def test_psi_bins_merge_when_deciles_share_a_bucket() -> None:
    rng = np.random.default_rng(5)
    ref = np.where(rng.random(N) < 0.35, 0.0, rng.lognormal(2, 1, N))  # 35% zeros
    cur = np.where(rng.random(N) < 0.10, 0.0, rng.lognormal(2, 1, N))
    sr, sc = sketch_of(ref), sketch_of(cur)
    edges = psi_edges(sr)
    assert edges.size == 7  # deciles 1-3 are all 0: one cut (at min_value) instead of three
    assert edges[0] == np.nextafter(sr.min_value, 0.0)
    assert abs(psi(sr, sc) - numpy_psi(ref, cur, edges)) <= 1e-9
    constant = sketch_of(np.full(1000, 7.0))
    assert psi_edges(constant).size == 1
    assert psi(constant, constant) == 0.0
    assert psi(constant, sketch_of(np.full(1000, 9.0))) > 5.0  # all mass moved to one bin


@pytest.mark.parametrize("name", list(pairs()))
def test_ks_within_001_of_scipy_on_100k_samples(name: str) -> None:
    ref, cur = pairs()[name]
    ks, upper = ks_statistic(sketch_of(ref), sketch_of(cur))
    d = stats.ks_2samp(ref, cur).statistic
    assert abs(ks - d) <= 0.01
    assert ks <= d + 1e-12 and d <= upper + 1e-12


finite = st.floats(-1e18, 1e18, allow_nan=False)
# two values at least: scipy's asymptotic p-value divides by zero for one against one
small_sets = st.lists(
    st.one_of(finite, st.sampled_from([0.0, 1.0, -1.0, 1e-12])), min_size=2, max_size=60
)


@settings(max_examples=200, deadline=None)
@given(ref=small_sets, cur=small_sets)
def test_ks_brackets_the_raw_statistic_on_any_data(ref: list[float], cur: list[float]) -> None:
    ks, upper = ks_statistic(sketch_of(np.array(ref)), sketch_of(np.array(cur)))
    d = stats.ks_2samp(ref, cur, method="asymp").statistic
    assert ks <= d + 1e-12 and d <= upper + 1e-12
    assert 0.0 <= ks <= upper <= 1.0 + 1e-12


def test_ks_is_exact_when_values_sit_on_edges() -> None:
    s = QuantileSketch()
    rng = np.random.default_rng(1)
    edges = s.edges[np.abs(s.edges) < 1e6]
    ref, cur = rng.choice(edges, 5000), rng.choice(edges[edges > -10], 4000)
    ks, _ = ks_statistic(sketch_of(ref), sketch_of(cur))
    assert abs(ks - stats.ks_2samp(ref, cur).statistic) <= 1e-12


def test_ks_pvalue_is_the_kolmogorov_tail() -> None:
    for n, m in [(10, 10), (100, 250), (1000, 1000), (1000, 50_000), (10**6, 10**6)]:
        root = math.sqrt(n * m / (n + m))
        for d in np.linspace(0.0, 0.6, 121):
            lam = (root + 0.12 + 0.11 / root) * d
            assert abs(ks_pvalue(float(d), n, m) - stats.kstwobign.sf(lam)) <= 1e-12


@pytest.mark.parametrize("n,m", [(100, 100), (100, 250), (500, 500), (2000, 3000)])
def test_ks_pvalue_close_to_scipy_exact(n: int, m: int) -> None:
    rng = np.random.default_rng(n + m)
    for shift in np.linspace(0.0, 0.6, 13):
        a, b = rng.normal(0, 1, n), rng.normal(shift, 1, m)
        exact = stats.ks_2samp(a, b, method="exact")
        assert abs(ks_pvalue(exact.statistic, n, m) - exact.pvalue) <= 0.03, shift


def test_ks_pvalue_close_to_scipy_asymptotic_at_100k() -> None:
    ref, _ = pairs()["same"]
    rng = np.random.default_rng(4)
    for shift in (0.0, 0.005, 0.01, 0.02):
        cur = rng.normal(shift, 1, N)
        res = stats.ks_2samp(ref, cur, method="asymp")
        assert abs(ks_pvalue(res.statistic, N, N) - res.pvalue) <= 0.002
        # and from the sketches: the same verdict, the statistic within 0.01
        nd = numeric_drift(sketch_of(ref), sketch_of(cur))
        assert nd.ks_pvalue == ks_pvalue(nd.ks, N, N) and nd.ks_pvalue >= res.pvalue - 0.002


def test_ks_pvalue_edges() -> None:
    assert ks_pvalue(0.0, 10, 10) == 1.0
    assert ks_pvalue(1.0, 1000, 1000) == 0.0
    assert math.isnan(ks_pvalue(math.nan, 10, 10))
    assert math.isnan(ks_pvalue(0.2, 0, 10)) and math.isnan(ks_pvalue(0.2, 10, 0))
    ps = [ks_pvalue(float(d), 300, 700) for d in np.linspace(0, 1, 501)]
    assert all(0.0 <= p <= 1.0 for p in ps) and ps == sorted(ps, reverse=True)


def counts_of(values: list[str], cap: int = 64) -> CategoryCounts:
    c = CategoryCounts(cap)
    c.update_many(values)
    return c


def scipy_js(a: CategoryCounts, b: CategoryCounts) -> float:
    keys = sorted(set(a.counts) | set(b.counts))
    p = [a.counts.get(k, 0) for k in keys] + [a.overflow]
    q = [b.counts.get(k, 0) for k in keys] + [b.overflow]
    return float(jensenshannon(p, q, base=2))


@pytest.mark.parametrize("seed", range(6))
def test_js_equals_scipy(seed: int) -> None:
    rng = np.random.default_rng(seed)
    k = int(rng.integers(2, 90))  # above the cap of 64 too: overflow is a category
    pr, pc = rng.dirichlet(np.ones(k)), rng.dirichlet(np.ones(k) * (seed + 0.5))
    ref = counts_of([f"c{i}" for i in rng.choice(k, 20_000, p=pr)])
    cur = counts_of([f"c{i}" for i in rng.choice(k, 5_000, p=pc)])
    got = categorical_drift(ref, cur)
    assert abs(got.js - scipy_js(ref, cur)) <= 1e-9
    assert abs(got.js_divergence - scipy_js(ref, cur) ** 2) <= 1e-9
    assert (got.n_ref, got.n_cur) == (20_000, 5_000)


def test_js_bounds_and_overflow() -> None:
    a = counts_of(["x"] * 10 + ["y"] * 30)
    assert js_distance(a, a) == 0.0
    assert js_distance(a, counts_of(["z"] * 7)) == 1.0  # disjoint: the maximum, base 2
    # the overflow of both sides is one shared category
    small_a, small_b = counts_of(["k", "p", "q"], cap=1), counts_of(["k", "r", "s"], cap=1)
    assert small_a.overflow == small_b.overflow == 2
    assert js_distance(small_a, small_b) == 0.0
    assert abs(js_distance(small_a, counts_of(["k"])) - scipy_js(small_a, counts_of(["k"]))) <= 1e-9
    assert math.isnan(js_distance(a, CategoryCounts()))


@settings(max_examples=150, deadline=None)
@given(
    ref=st.lists(st.sampled_from("abcdefgh"), max_size=40),
    cur=st.lists(st.sampled_from("abcdefgh"), max_size=40),
    cap=st.integers(1, 9),
)
def test_js_equals_scipy_on_any_counts(ref: list[str], cur: list[str], cap: int) -> None:
    a, b = counts_of(ref, cap), counts_of(cur, cap)
    got = js_distance(a, b)
    if not ref or not cur:
        assert math.isnan(got)
    else:
        assert abs(got - scipy_js(a, b)) <= 1e-9 and 0.0 <= got <= 1.0


def test_results_are_small_frozen_records() -> None:
    ref, cur = pairs()["shift"]
    nd = numeric_drift(sketch_of(ref), sketch_of(cur))
    assert isinstance(nd, NumericDrift) and (nd.n_ref, nd.n_cur) == (N, N)
    assert nd.psi == psi(sketch_of(ref), sketch_of(cur))
    assert (nd.ks, nd.ks_upper) == ks_statistic(sketch_of(ref), sketch_of(cur))
    with pytest.raises(dataclasses.FrozenInstanceError):
        nd.psi = 0.0  # type: ignore[misc]
    cd = categorical_drift(counts_of(["a"]), counts_of(["b"]))
    assert isinstance(cd, CategoricalDrift) and cd.js == 1.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        cd.js = 0.0  # type: ignore[misc]


def test_empty_sides_give_nan_and_mismatches_raise() -> None:
    full = sketch_of(np.arange(10.0))
    empty = numeric_drift(full, QuantileSketch())
    assert math.isnan(empty.psi) and math.isnan(empty.ks) and math.isnan(empty.ks_pvalue)
    assert (empty.n_ref, empty.n_cur) == (10, 0)
    assert math.isnan(numeric_drift(QuantileSketch(), full).psi)
    cd = categorical_drift(CategoryCounts(), counts_of(["a"]))
    assert math.isnan(cd.js) and (cd.n_ref, cd.n_cur) == (0, 1)
    other = sketch_of(np.arange(10.0), alpha=0.02)
    for fn in (psi, ks_statistic, numeric_drift):
        with pytest.raises(ValueError):
            fn(full, other)
    for bad in ({"bins": 1}, {"bins": 2.5}, {"epsilon": 0.0}, {"epsilon": 1.0}):
        with pytest.raises(ValueError):
            psi(full, full, **bad)
    with pytest.raises(ValueError):
        psi_edges(QuantileSketch())


def test_doctests() -> None:
    result = doctest.testmod(drift, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0
