"""The demo's house-price market and models: deterministic, drifting, plausibly different."""

from __future__ import annotations

import itertools
import threading
import time
from typing import Any

import numpy as np
import pytest

from streams import demo_models as dm
from streams.config import Config
from streams.models import Candidate, load_candidate
from streams.simulation import NOMINAL_EVENTS, drift_at, run_service
from streams.tap import TapStats


def features(samples: list[dm.Sample]) -> list[dict[str, Any]]:
    return [{**numeric, **categorical} for numeric, categorical, _ in samples]


def test_market_is_deterministic_per_seed() -> None:
    a = dm.HouseMarket(3).sample(200, 0.3)
    b = dm.HouseMarket(3).sample(200, 0.3)
    c = dm.HouseMarket(4).sample(200, 0.3)
    assert a == b
    assert a != c


def test_sample_shape_and_domains() -> None:
    samples = dm.HouseMarket(1).sample(500, 0.0)
    assert len(samples) == 500
    for numeric, categorical, context in samples:
        assert set(numeric) == set(dm.NUMERIC)
        assert all(isinstance(v, float) and np.isfinite(v) for v in numeric.values())
        assert categorical["region"] in dm.REGIONS
        assert categorical["property_type"] in dm.PROPERTY_TYPES
        assert context["region"] == categorical["region"]
        assert context["channel"] in dm.CHANNELS
        assert numeric["sqft"] > 0 and numeric["bedrooms"] >= 1 and numeric["lot_size"] >= 0


def test_drift_shifts_the_market() -> None:
    before = dm.HouseMarket(11).sample(5000, 0.0)
    after = dm.HouseMarket(11).sample(5000, 1.0)

    def mean(samples: list[dm.Sample], name: str) -> float:
        return float(np.mean([n[name] for n, _, _ in samples]))

    def share(samples: list[dm.Sample], which: int, key: str, value: str) -> float:
        return float(np.mean([s[which][key] == value for s in samples]))

    assert mean(after, "distance_km") > 1.5 * mean(before, "distance_km")
    assert mean(after, "sqft") > 1.2 * mean(before, "sqft")
    assert mean(after, "lot_size") > 1.5 * mean(before, "lot_size")
    assert share(after, 1, "region", "center") < share(before, 1, "region", "center") - 0.1
    assert share(after, 2, "channel", "app") > share(before, 2, "channel", "app") + 0.2
    with pytest.raises(ValueError, match="drift"):
        dm.HouseMarket().sample(1, 1.5)


def test_models_are_deterministic() -> None:
    xs = features(dm.HouseMarket(5).sample(300, 0.5))
    tree = dm.TreePriceModel(cost_us=0)
    for model in (dm.primary, tree, dm.ridge_candidate):
        assert [model.predict_one(x) for x in xs] == [model.predict_one(x) for x in xs]
    assert dm.ridge_candidate.predict_many(xs) == pytest.approx(
        [dm.ridge_candidate.predict_one(x) for x in xs], rel=1e-12
    )


def test_candidates_differ_from_primary_by_modest_amounts() -> None:
    xs = features(dm.HouseMarket(9).sample(3000, 0.0))
    p = np.array([dm.primary.predict_one(x) for x in xs])
    ridge = np.array(dm.ridge_candidate.predict_many(xs))
    tree = np.array([dm.TreePriceModel(cost_us=0).predict_one(x) for x in xs])
    assert 200 < p.mean() < 500  # thousands
    ridge_gap = np.abs(ridge - p) / p
    tree_gap = np.abs(tree - p) / p
    assert 0.001 < ridge_gap.mean() < 0.05  # close, not identical
    assert 0.02 < tree_gap.mean() < 0.12  # a different model...
    assert np.mean(tree_gap > 0.15) > 0.01  # ...noticeably different now and then


def test_tree_wins_after_the_drift_and_loses_before() -> None:
    """The story: the primary decays once the market moves; the tree fits the new one."""
    tree = dm.TreePriceModel(cost_us=0)
    maes = {}
    for drift in (0.0, 1.0):
        market = dm.HouseMarket(21)
        samples = market.sample(3000, drift)
        y = np.array([market.price(n, c, drift) for n, c, _ in samples])
        xs = features(samples)
        p = np.array([dm.primary.predict_one(x) for x in xs])
        t = np.array([tree.predict_one(x) for x in xs])
        maes[drift] = (np.abs(y - p).mean(), np.abs(y - t).mean())
    assert maes[0.0][0] < maes[0.0][1]
    assert maes[1.0][1] < maes[1.0][0]
    assert maes[1.0][0] > 3 * maes[0.0][0]  # model decay


def test_flaky_candidate_fails_about_one_percent() -> None:
    xs = features(dm.HouseMarket(2).sample(20_000, 0.2))
    cand = load_candidate("flaky@1=streams.demo_models:flaky_candidate")
    outs = cand.predict_batch(xs)
    rate = np.mean([not o.ok for o in outs])
    assert 0.005 < rate < 0.02
    # Only the unlucky requests fail: the others equal the ridge model's answers.
    ridge = dm.ridge_candidate.predict_many(xs)
    assert all(o.value == pytest.approx(r) for o, r in zip(outs, ridge, strict=True) if o.ok)
    assert all("RuntimeError: feature store timeout" in (o.error or "") for o in outs if not o.ok)


def test_tree_is_slower_per_request() -> None:
    xs = features(dm.HouseMarket(2).sample(200, 0.0))
    tree = Candidate("tree@1", dm.TreePriceModel(cost_us=200))
    linear = Candidate("lin@1", dm.primary)
    tree_ms = np.median([o.latency_ms for o in tree.predict_batch(xs)])
    linear_ms = np.median([o.latency_ms for o in linear.predict_batch(xs)])
    assert tree_ms >= 0.2 > linear_ms


def test_demo_specs_load() -> None:
    ids = [load_candidate(spec).model_id for spec in dm.CANDIDATE_SPECS]
    assert ids == ["price-ridge@4", "price-tree@1"]
    assert load_candidate(f"{dm.PRIMARY_ID}=streams.demo_models:primary").model_id == (
        dm.PRIMARY_ID
    )


# -- the simulated service, with a tap that only records (no broker) ----------------------


class RecordingTap:
    #: no promotion: the service answers with its own primary
    primary: str | None = None

    def __init__(self) -> None:
        self.requests: list[tuple[Any, ...]] = []
        self.predictions: list[tuple[Any, ...]] = []

    def record_request(self, request_id: str, numeric: Any, categorical: Any, **kw: Any) -> bool:
        self.requests.append((request_id, numeric, categorical, kw))
        return True

    def record_prediction(self, request_id: str, model_id: str, **kw: Any) -> bool:
        self.predictions.append((request_id, model_id, kw))
        return True

    def stats(self) -> TapStats:
        n = len(self.requests) + len(self.predictions)
        return TapStats(accepted=n, sent=n)


def test_drift_schedule() -> None:
    assert drift_at(0, 1000, 0.5) == 0.0
    assert drift_at(499, 1000, 0.5) == 0.0
    assert drift_at(550, 1000, 0.5) == pytest.approx(0.5)
    assert drift_at(600, 1000, 0.5) == 1.0
    assert drift_at(999, 1000, 0.5) == 1.0
    assert drift_at(NOMINAL_EVENTS // 2, None, 0.5) == 0.0  # endless runs: nominal length
    assert drift_at(NOMINAL_EVENTS, None, 0.5) == 1.0


def test_service_mirrors_requests_and_primary_answers() -> None:
    tap = RecordingTap()
    stats = run_service(
        Config(),
        events=120,
        rate=0,
        seed=4,
        time_step_ms=100,
        tap=tap,  # type: ignore[arg-type]
    )
    assert (stats.requests, stats.sent, stats.final_drift) == (120, 240, 1.0)
    assert [r[0] for r in tap.requests] == [f"4-{i}" for i in range(120)]
    times = [r[3]["event_time_ms"] for r in tap.requests]
    assert [b - a for a, b in itertools.pairwise(times)] == [100] * 119
    for (rid, numeric, categorical, kw), (pid, model_id, pkw) in zip(
        tap.requests, tap.predictions, strict=True
    ):
        assert (pid, model_id) == (rid, dm.PRIMARY_ID)
        assert pkw["value"] == dm.primary.predict_one({**numeric, **categorical})
        assert pkw["event_time_ms"] == kw["event_time_ms"]
        assert pkw["error"] is None and pkw["latency_ms"] >= 0
        assert set(kw["context"]) == {"region", "channel"}
    # The same seed replays the same requests.
    again = RecordingTap()
    run_service(Config(), events=120, rate=0, seed=4, tap=again)  # type: ignore[arg-type]
    assert [r[:3] for r in again.requests] == [r[:3] for r in tap.requests]


def test_service_paces_and_stops() -> None:
    tap = RecordingTap()
    start = time.monotonic()
    run_service(Config(), events=40, rate=200, tap=tap)  # type: ignore[arg-type]
    assert time.monotonic() - start >= 0.19
    stop = threading.Event()
    stop.set()
    stats = run_service(Config(), events=None, rate=0, stop=stop, tap=tap)  # type: ignore[arg-type]
    assert stats.requests == 0
