"""LatencySketch against numpy's exact order statistics.

Tolerance: for every q, ``|sketch.quantile(q) - x| <= ALPHA_TOL * x`` where ``x`` is
``np.quantile(values, q, method="lower")``, the order statistic of rank
``floor(q * (n - 1))``; ``ALPHA_TOL`` is ``alpha`` plus 1e-12 relative slack for float
rounding of the bucket boundaries. Merges must be exactly (array-) equal.
"""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest

from streams.metrics.sketch import LatencySketch

QUANTILES = (0.5, 0.9, 0.95, 0.99, 0.999)
N = 50_000


def slack(alpha: float) -> float:
    return alpha * (1 + 1e-12)


def datasets() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(2024)
    bimodal = np.concatenate(
        [rng.normal(20.0, 2.0, N * 7 // 10), rng.lognormal(np.log(800.0), 0.3, N * 3 // 10)]
    )
    return {
        "lognormal": rng.lognormal(np.log(30.0), 1.0, N),
        "uniform": rng.uniform(1.0, 1000.0, N),
        "bimodal": np.abs(rng.permutation(bimodal)),
        "heavy": rng.pareto(1.2, N) * 5.0 + 0.01,  # spans many decades
    }


def sketch_of(values: np.ndarray, **params: float) -> LatencySketch:
    s = LatencySketch(**params)
    s.update_many(values)
    return s


@pytest.mark.parametrize("name", ["lognormal", "uniform", "bimodal", "heavy"])
@pytest.mark.parametrize("alpha", [0.01, 0.02, 0.005])
def test_quantiles_within_relative_error(name: str, alpha: float) -> None:
    values = datasets()[name]
    s = sketch_of(values, alpha=alpha)
    assert s.count == values.size
    grid = np.concatenate([QUANTILES, np.linspace(0.0, 1.0, 201)])
    for q in grid:
        exact = float(np.quantile(values, q, method="lower"))
        assert abs(s.quantile(float(q)) - exact) <= slack(alpha) * exact, (name, q)


def test_bucket_boundaries_keep_the_guarantee() -> None:
    # values exactly on, just below and just above every boundary
    s = LatencySketch()
    edges = s._grid.edges[1:-1]
    for x in np.concatenate([edges, np.nextafter(edges, 0), np.nextafter(edges, np.inf)]):
        one = LatencySketch()
        one.update(float(x))
        assert abs(one.quantile(0.5) - x) <= slack(s.alpha) * x
    # and the batch path puts each of them in the same bucket as the scalar path
    xs = np.concatenate([edges, np.nextafter(edges, 0), np.nextafter(edges, np.inf)])
    scalar = LatencySketch()
    for x in xs:
        scalar.update(float(x))
    assert scalar == sketch_of(xs)


@pytest.mark.parametrize("seed", range(5))
def test_merge_of_random_split_equals_sketch_of_all(seed: int) -> None:
    rng = np.random.default_rng(seed)
    values = datasets()["heavy"]
    whole = sketch_of(values)
    cuts = np.sort(rng.integers(0, values.size, int(rng.integers(1, 30))))
    parts = [sketch_of(chunk) for chunk in np.split(rng.permutation(values), cuts)]
    merged = LatencySketch()
    for i in rng.permutation(len(parts)):
        merged.merge(parts[i])
    assert np.array_equal(merged.counts, whole.counts)
    assert merged == whole


def test_scalar_update_equals_batch_update() -> None:
    values = datasets()["lognormal"][:2000]
    s = LatencySketch()
    for v in values.tolist():
        s.update(v)
    assert s == sketch_of(values)


def test_sparse_round_trip() -> None:
    s = sketch_of(datasets()["bimodal"])
    indices, counts = s.to_sparse()
    assert all(isinstance(i, int) for i in indices + counts)
    assert 0 not in counts
    assert LatencySketch.from_sparse(indices, counts) == s
    assert LatencySketch.from_sparse([], []) == LatencySketch()
    t = sketch_of(np.array([1.0, 2.0, 3.0]), alpha=0.05, min_value=0.5, max_value=100.0)
    back = LatencySketch.from_sparse(*t.to_sparse(), alpha=0.05, min_value=0.5, max_value=100.0)
    assert back == t
    assert LatencySketch.from_sparse(*t.to_sparse(), alpha=0.05) != t  # other parameters
    assert pickle.loads(pickle.dumps(s)) == s


def test_from_sparse_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        LatencySketch.from_sparse([0, 1], [1])
    with pytest.raises(ValueError):
        LatencySketch.from_sparse([LatencySketch.BUCKETS], [1])
    with pytest.raises(ValueError):
        LatencySketch.from_sparse([-1], [1])
    with pytest.raises(ValueError):
        LatencySketch.from_sparse([3], [-1])


def test_clamping_is_counted() -> None:
    s = LatencySketch()
    s.update_many(np.array([0.0, 1e-4, 5.0, 2e7, math.inf]))
    s.update(1e9)
    s.update(5e-4)
    assert (s.underflow, s.overflow, s.count) == (3, 3, 7)
    assert s.quantile(0.0) == s.min_value  # underflow is reported as min_value
    assert s.quantile(1.0) == s.max_value  # overflow is reported as max_value
    at_limits = sketch_of(np.array([s.min_value, s.max_value]))
    assert (at_limits.underflow, at_limits.overflow) == (0, 0)  # both ends are inside


def test_parameters_and_layout() -> None:
    s = LatencySketch()
    assert (s.alpha, s.min_value, s.max_value) == (0.01, 1e-3, 1e7)
    assert s.n_buckets == LatencySketch.BUCKETS == s.counts.size
    gamma = (1 + s.alpha) / (1 - s.alpha)
    assert s.gamma == gamma
    spans = math.ceil(math.log(1e7 / 1e-3, gamma))  # log buckets: this many, or one more
    assert LatencySketch.BUCKETS - 2 in (spans, spans + 1)
    assert s.counts.dtype == np.int64
    assert sketch_of(np.array([]), alpha=0.05).n_buckets < s.n_buckets
    for bad in ({"alpha": 0.0}, {"alpha": 1.0}, {"min_value": 0.0}, {"max_value": 1e-4}):
        with pytest.raises(ValueError):
            LatencySketch(**bad)


def test_merge_rejects_other_parameters() -> None:
    with pytest.raises(ValueError):
        LatencySketch().merge(LatencySketch(alpha=0.02))
    with pytest.raises(ValueError):
        LatencySketch().merge(LatencySketch(max_value=1e6))
    with pytest.raises(TypeError):
        LatencySketch().merge([1, 2])  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [math.nan, -1.0, -1e-300])
def test_nan_and_negative_raise_and_add_nothing(bad: float) -> None:
    s = sketch_of(np.array([1.0, 2.0]))
    with pytest.raises(ValueError):
        s.update(bad)
    with pytest.raises(ValueError):
        s.update_many(np.array([3.0, bad]))
    assert s.count == 2


def test_quantile_edge_cases() -> None:
    assert math.isnan(LatencySketch().quantile(0.5))
    s = sketch_of(np.array([10.0]))
    assert all(abs(s.quantile(q) - 10.0) <= slack(0.01) * 10.0 for q in (0.0, 0.5, 1.0))
    for q in (-0.1, 1.1, math.nan):
        with pytest.raises(ValueError):
            s.quantile(q)
