"""Profiles and slices as the joiner folds them, against numpy on the same data."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from streams.joinstate import PartitionState
from streams.metrics.partial import SHARED, PartialStats
from streams.metrics.profile import MAX_FEATURES, Profile
from streams.metrics.quantiles import QuantileSketch
from streams.metrics.slices import MAX_VALUES, Slices, slice_names
from streams.schemas import default_codec

NOW = 1_800_000_000_000
T0 = NOW - 100_000


def run(n: int, seed: int, *, batch: int = 37) -> tuple[dict[str, PartialStats], dict]:
    rng = np.random.default_rng(seed)
    sqft = rng.normal(80, 30, n)
    delta = rng.standard_t(3, n)  # negative and positive, heavy tails
    city = rng.choice(["Paris", "Lyon", "Nice", "Lille"], n, p=[0.4, 0.3, 0.2, 0.1])
    region = rng.choice(["eu", "us", "apac"], n)
    prim = rng.normal(300, 50, n)
    cand = prim + rng.normal(2, 5, n)
    st = PartitionState(0, 1_000, 200, 3_000, max_age_ms=200_000, max_skew_ms=5_000)
    out = []
    for i in range(n):
        t = T0 + i * 7
        rid = f"r{i}"
        common = {"request_id": rid, "event_time": t, "label": None, "latency_ms": 1.0}
        if i % 2:  # half the answers come before their request
            st.on_prediction(
                {**common, "model_id": "p@1", "role": "PRIMARY", "value": prim[i], "error": None},
                NOW,
            )
        st.on_request(
            {
                "request_id": rid,
                "event_time": t,
                "numeric_features": {"sqft": float(sqft[i]), "delta": float(delta[i])},
                "categorical_features": {"city": str(city[i])},
                "context": {"region": str(region[i])},
            },
            NOW,
        )
        if not i % 2:
            st.on_prediction(
                {**common, "model_id": "p@1", "role": "PRIMARY", "value": prim[i], "error": None},
                NOW,
            )
        st.on_prediction(
            {**common, "model_id": "c@1", "role": "CANDIDATE", "value": cand[i], "error": None}, NOW
        )
        if i % batch == 0:
            out += st.advance()
            list(st.changes(lambda k, s: b""))
    st.finish_open()
    out += st.advance(close_all=True)
    totals: dict[str, PartialStats] = {}
    for e in out:
        totals.setdefault(e.candidate, PartialStats()).merge(e.stats)
    data = {"sqft": sqft, "delta": delta, "city": city, "region": region, "p": prim, "c": cand}
    return totals, data


@pytest.mark.parametrize("seed", [1, 2])
def test_profiles_equal_sketches_of_all_the_data(seed: int) -> None:
    totals, d = run(3_000, seed)
    prof = totals[SHARED].profile
    for name in ("sqft", "delta"):
        ref = QuantileSketch()
        ref.update_many(d[name])
        assert prof.numeric[name] == ref
        # and the sketch's quantiles are within its relative accuracy of numpy's
        for q in (0.01, 0.5, 0.99):
            want = np.quantile(d[name], q, method="lower")
            assert prof.numeric[name].quantile(q) == pytest.approx(want, rel=0.0101)
    assert prof.categorical["city"].counts == dict(Counter(d["city"].tolist()))
    ref_out = QuantileSketch()
    ref_out.update_many(d["p"])
    assert prof.primary_output == ref_out
    assert prof.candidate_output is None
    cand_out = totals["c@1"].profile.candidate_output
    assert cand_out is not None and cand_out.count == 3_000


@pytest.mark.parametrize("seed", [1, 2])
def test_slices_equal_numpy_groupby(seed: int) -> None:
    """MAE, RMSE and bias by region equal numpy's on the same rows (rel 1e-12: exact sums,
    one rounding at the end), whether each request came before or after its answers."""
    totals, d = run(3_000, seed)
    slices = totals["c@1"].slices.by_name
    shared = totals[SHARED].slices.by_name
    diff = d["c"] - d["p"]
    for region in ("eu", "us", "apac"):
        rows = d["region"] == region
        got = slices[f"region={region}"].summary()
        assert got["pairs"] == rows.sum()
        assert got["mae"] == pytest.approx(np.abs(diff[rows]).mean(), rel=1e-12)
        assert got["rmse"] == pytest.approx(np.sqrt((diff[rows] ** 2).mean()), rel=1e-12)
        assert got["mean_signed_diff"] == pytest.approx(diff[rows].mean(), rel=1e-12)
        assert shared[f"region={region}"].requests == rows.sum()
        out = slices[f"region={region}"].candidate_output
        assert out is not None and out.count == rows.sum()
        prim = shared[f"region={region}"].primary_output
        assert prim is not None and prim.count == rows.sum()


def test_slice_values_are_capped_and_counted() -> None:
    s = Slices()
    for i in range(MAX_VALUES + 10):
        got = s.get(f"tenant=t{i}", 3)
        assert (got is None) == (i >= MAX_VALUES)
    assert s.overflow == {"tenant": 30}
    assert len(s.by_name) == MAX_VALUES
    rec = default_codec().decode_as(
        "Partial",
        default_codec().encode("Partial", {**PartialStats().to_partial(), **s.to_record()}),
    )
    assert Slices.from_record(rec).overflow == {"tenant": 30}


def test_feature_names_are_capped_and_counted() -> None:
    p = Profile()
    for i in range(MAX_FEATURES + 5):
        p.add_numeric(f"f{i}", np.array([1.0, 2.0]))
    assert len(p.numeric) == MAX_FEATURES
    assert p.dropped_features == 10


def test_slice_names_are_bounded() -> None:
    ctx = {f"k{i}": "v" * 500 for i in range(20)}
    names = slice_names(ctx)
    assert len(names) == 8
    assert all(len(n.split("=", 1)[1]) == 64 for n in names)
