"""PartialStats against numpy references, and its mergeability and Avro form.

Tolerances: MAE, RMSE and the mean signed difference within rel 1e-12 of numpy's (the
sums are exact and rounded once, numpy's pairwise sums are not); counts and the
disagreement rate exactly; latency quantiles within the sketch's relative accuracy alpha
(plus 1e-12 for float rounding of bucket bounds) of ``np.quantile(method="lower")``;
merges and round trips identical (``==`` compares the whole Avro record, exact sums
included).
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
import pytest

from streams.metrics.partial import COVERAGE_FIELDS, PartialStats
from streams.schemas import default_codec

N = 10_000
REL = 1e-12
ALPHA = 0.01


def regression_pairs(seed: int, n: int = N) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    primary = rng.normal(100.0, 30.0, n)
    candidate = primary + rng.standard_t(3, n) * rng.choice([0.01, 1.0, 50.0], n)
    return primary, candidate


def latency_values(seed: int, n: int = N) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.lognormal(np.log(20.0), 0.8, n), rng.lognormal(np.log(35.0), 1.2, n)


def full_stats(seed: int, lo: int = 0, hi: int = N) -> PartialStats:
    """Regression, classification, latency and coverage of rows ``lo:hi`` of one dataset."""
    p, c = regression_pairs(seed)
    lp, lc = latency_values(seed + 1)
    labels_p, labels_c = class_labels(seed + 2)
    s = PartialStats()
    s.add_regression(p[lo:hi], c[lo:hi])
    s.add_classification(labels_p[lo:hi], labels_c[lo:hi])
    s.add_latency(lp[lo:hi], lc[lo:hi])
    for i, name in enumerate(COVERAGE_FIELDS):
        s.count(name, (hi - lo) * (i + 1))  # additive over any split
    return s


def class_labels(seed: int, n: int = N) -> tuple[list[str], list[str]]:
    rng = np.random.default_rng(seed)
    classes = np.array(["cat", "dog", "bird"])
    p = rng.choice(classes, n)
    c = np.where(rng.random(n) < 0.8, p, rng.choice(classes, n))
    return p.tolist(), c.tolist()


def rel_close(a: float, b: float, rel: float = REL) -> bool:
    return abs(a - b) <= rel * abs(b)


# -- against numpy ---------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_regression_summary_matches_numpy(seed: int) -> None:
    p, c = regression_pairs(seed)
    s = PartialStats()
    s.add_regression(p, c)
    d = c - p
    out = s.summary()
    assert out["task"] == "regression"
    assert out["regression_pairs"] == N
    assert rel_close(out["mae"], float(np.mean(np.abs(d))))
    assert rel_close(out["rmse"], float(np.sqrt(np.mean(d * d))))
    assert rel_close(out["mean_signed_diff"], float(np.mean(d)))
    # the stored sums are exact: equal to math.fsum, bit for bit
    assert out["sum_diff"] == math.fsum(d.tolist())
    assert out["sum_abs_diff"] == math.fsum(np.abs(d).tolist())
    assert out["sum_sq_diff"] == math.fsum((d * d).tolist())


def test_nonfinite_pairs_are_invalid_and_excluded() -> None:
    p, c = regression_pairs(7, 1000)
    p, c = p.copy(), c.copy()
    p[[3, 50]] = np.nan
    c[[10, 11]] = np.inf
    c[[20]] = -np.inf
    p[[30]], c[[30]] = np.inf, 5.0
    bad = {3, 50, 10, 11, 20, 30}
    s = PartialStats()
    s.add_regression(p, c)
    keep = np.array([i not in bad for i in range(1000)])
    d = (c - p)[keep]
    assert s.coverage["invalid"] == len(bad)
    assert s.regression_n == 1000 - len(bad)
    out = s.summary()
    assert rel_close(out["mae"], float(np.mean(np.abs(d))))
    assert rel_close(out["rmse"], float(np.sqrt(np.mean(d * d))))
    assert rel_close(out["mean_signed_diff"], float(np.mean(d)))


@pytest.mark.parametrize(
    ("p", "c"),
    [(np.inf, np.inf), (0.0, 1e200), (-1e308, 1e308)],
    ids=["inf-inf", "square-overflows", "difference-overflows"],
)
def test_overflowing_pairs_are_counted_invalid_quietly(p: float, c: float) -> None:
    s = PartialStats()
    s.add_regression(np.array([p, 1.0]), np.array([c, 2.0]))
    assert s.coverage["invalid"] == 1
    assert s.regression_n == 1
    assert s.summary()["mae"] == 1.0


def test_all_invalid_pairs_leave_no_regression() -> None:
    s = PartialStats()
    s.add_regression(np.array([np.nan, 1.0]), np.array([1.0, np.nan]))
    assert s.coverage["invalid"] == 2
    assert s.regression_n == 0
    assert s.summary()["mae"] is None


@pytest.mark.parametrize("seed", range(3))
def test_classification_disagreement_rate_matches_numpy(seed: int) -> None:
    p, c = class_labels(seed)
    s = PartialStats()
    s.add_classification(p[:4000], c[:4000])
    s.add_classification(p[4000:], c[4000:])
    out = s.summary()
    assert out["task"] == "classification"
    assert out["classification_pairs"] == N
    assert s.class_disagreements == int(np.sum(np.array(p) != np.array(c)))
    assert out["disagreement_rate"] == pytest.approx(
        float(np.mean(np.array(p) != np.array(c))), rel=1e-15
    )
    assert out["mae"] is None


def test_classification_length_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError):
        PartialStats().add_classification(["a", "b"], ["a"])


@pytest.mark.parametrize("seed", range(3))
def test_latency_quantiles_within_sketch_accuracy(seed: int) -> None:
    lp, lc = latency_values(seed)
    s = PartialStats()
    s.add_latency(lp, lc)
    out = s.summary()
    for side, values in (("primary", lp), ("candidate", lc)):
        for q, name in ((0.5, "p50"), (0.95, "p95"), (0.99, "p99")):
            ref = float(np.quantile(values, q, method="lower"))
            got = out[f"{side}_latency_{name}"]
            assert abs(got - ref) <= ALPHA * (1 + 1e-12) * ref, (side, q, got, ref)


def test_latency_drops_nan_and_negative_values() -> None:
    s = PartialStats()
    s.add_latency(np.array([1.0, np.nan, -2.0, 3.0]), None)
    s.add_latency(None, np.array([]))
    assert s.primary_latency.count == 2
    assert s.candidate_latency.count == 0
    assert s.summary()["candidate_latency_p50"] is None


def test_error_rates_from_coverage() -> None:
    s = PartialStats()
    s.count("primary_predictions", 200)
    s.count("primary_errors", 3)
    s.count("candidate_predictions", 50)
    s.count("candidate_errors", 5)
    out = s.summary()
    assert out["primary_error_rate"] == 3 / 200
    assert out["candidate_error_rate"] == 5 / 50


def test_empty_stats_summary_has_no_metrics() -> None:
    s = PartialStats()
    assert s.is_empty()
    out = s.summary()
    for key in (
        "mae",
        "rmse",
        "mean_signed_diff",
        "disagreement_rate",
        "primary_error_rate",
        "candidate_error_rate",
        "primary_latency_p50",
        "primary_latency_p95",
        "primary_latency_p99",
        "candidate_latency_p50",
        "candidate_latency_p95",
        "candidate_latency_p99",
    ):
        assert out[key] is None, key
    assert out["task"] == ""
    assert out["regression_pairs"] == 0 and out["classification_pairs"] == 0
    assert out["sum_diff"] == 0.0


def test_unknown_coverage_counter_is_an_error() -> None:
    with pytest.raises(KeyError):
        PartialStats().count("dropped")


# -- merging ---------------------------------------------------------------------------


@pytest.mark.parametrize("k", [2, 3, 7, 25])
def test_merge_over_random_split_equals_stats_over_all(k: int) -> None:
    seed = 11
    whole = full_stats(seed)
    rng = np.random.default_rng(k)
    cuts = np.sort(rng.choice(np.arange(1, N), k - 1, replace=False))
    bounds = [0, *cuts.tolist(), N]
    chunks = [full_stats(seed, lo, hi) for lo, hi in itertools.pairwise(bounds)]
    for order in (range(k), reversed(range(k)), rng.permutation(k).tolist()):
        merged = PartialStats()
        for i in order:
            merged.merge(chunks[i])
        assert merged == whole
        assert merged.to_record() == whole.to_record()
        assert merged.summary() == whole.summary()


def test_merge_as_a_tree_equals_sequential_merge() -> None:
    chunks = [full_stats(3, lo, lo + 1000) for lo in range(0, N, 1000)]
    seq = PartialStats()
    for ch in chunks:
        seq.merge(ch)
    level = [PartialStats.from_record(ch.to_record()) for ch in chunks]
    while len(level) > 1:
        nxt = []
        for a, b in itertools.zip_longest(level[::2], level[1::2]):
            if b is not None:
                a.merge(b)
            nxt.append(a)
        level = nxt
    assert level[0] == seq


def test_merge_with_empty_is_identity() -> None:
    s = full_stats(5)
    before = s.to_record()
    s.merge(PartialStats())
    assert s.to_record() == before
    e = PartialStats()
    e.merge(full_stats(5))
    assert e == s


def test_equality_sees_every_field() -> None:
    a, b = full_stats(9), full_stats(9)
    assert a == b
    b.count("duplicates")
    assert a != b
    b = full_stats(9)
    b.add_latency(None, np.array([1.0]))
    assert a != b
    b = full_stats(9)
    b.add_regression(np.array([0.0]), np.array([0.0]))  # d = 0 changes n, not the sums
    assert a != b


# -- Avro form ---------------------------------------------------------------------------


def partial_record(stats: PartialStats) -> dict[str, Any]:
    return {
        "joiner_partition": 2,
        "partition_count": 6,
        "candidate": "cand@2",
        "window_start": 1_700_000_000_000,
        "window_end": 1_700_000_010_000,
        **stats.to_record(),
    }


def test_record_round_trip() -> None:
    s = full_stats(4)
    assert PartialStats.from_record(s.to_record()) == s
    empty = PartialStats()
    assert PartialStats.from_record(empty.to_record()) == empty


def test_record_encodes_as_a_partial_and_decodes_equal() -> None:
    codec = default_codec()
    for s in (full_stats(4), PartialStats()):
        data = codec.encode("Partial", partial_record(s))
        rec = codec.decode_as("Partial", data)
        assert rec["candidate"] == "cand@2"
        assert rec["primary"] == "" and rec["seq"] == 0 and rec["watermark"] == 0  # defaults
        back = PartialStats.from_record(rec)
        assert back == s
        assert back.summary() == s.summary()


def test_record_holds_exact_sums_and_sparse_sketches() -> None:
    s = PartialStats()
    s.add_regression(np.array([0.0, 0.0, 0.0]), np.array([1e100, 1.0, -1e100]))
    s.add_latency(np.array([5.0, 5.0, 500.0]), None)
    rec = s.to_record()
    # the naive float sum would lose the 1.0; the exact one keeps it through Avro
    back = PartialStats.from_record(
        default_codec().decode_as("Partial", default_codec().encode("Partial", partial_record(s)))
    )
    assert back.summary()["sum_diff"] == 1.0
    assert sum(rec["primary_latency"]["counts"]) == 3
    assert len(rec["primary_latency"]["indices"]) == 2
    assert rec["candidate_latency"]["indices"] == []


def test_from_record_refuses_another_exact_scale() -> None:
    s = full_stats(1, 0, 10)
    rec = s.to_record()
    rec["regression"]["exact_scale"] = 52
    with pytest.raises(ValueError, match="exact_scale"):
        PartialStats.from_record(rec)
