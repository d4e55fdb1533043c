"""The drift alarm rule: its false-alarm rate by simulation, its power, ADWIN's restore.

The simulations draw real samples with numpy (the KS statistic and PSI of each window are
computed from them, against a fixed reference sample per feature, as the evaluator does),
under a fixed seed. References: scipy's Kolmogorov and chi-square distributions, and
river's ADWIN run directly.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from river.drift import ADWIN
from scipy import stats
from scipy.spatial.distance import jensenshannon

from streams.alerts.drift_rule import (
    Categorical,
    CategoricalStats,
    ChangeDetector,
    ChangeDetectors,
    DriftAlarm,
    DriftRule,
    Numeric,
    NumericStats,
    chi2_sf,
    expected_false_alarms_per_day,
    kolmogorov_sf,
    ks_pvalue,
)

Array = npt.NDArray[np.float64]
WINDOWS_PER_DAY = 8640  # 10 s windows
FEATURES = 20
BINS = 10


def window_stats(ref_sorted: Array, cur: Array) -> tuple[Array, Array]:
    """KS D and PSI of each row of ``cur`` (windows x n) against one sorted reference.

    D: both ECDFs are right-continuous steps, and between two current points the reference
    ECDF only rises, so the supremum is reached at a current point, from the left or the
    right. PSI: on the reference's deciles, empty bins floored at half a count.
    """
    n = cur.shape[1]
    c = np.sort(cur, axis=1)
    r = np.searchsorted(ref_sorted, c).astype(np.float64) / ref_sorted.size
    i = np.arange(1, n + 1) / n
    d = np.maximum(np.abs(i - r), np.abs(i - 1.0 / n - r)).max(axis=1)
    edges = ref_sorted[(np.arange(1, BINS) * ref_sorted.size) // BINS]
    bins = np.searchsorted(edges, cur)
    counts = (bins[..., None] == np.arange(BINS)).sum(axis=1)
    q = np.maximum(counts, 0.5) / n
    p = np.diff(np.r_[0, (np.arange(1, BINS) * ref_sorted.size) // BINS, ref_sorted.size])
    p = p / ref_sorted.size
    psi = ((q - p) * np.log(q / p)).sum(axis=1)
    return d, psi


def test_window_stats_match_scipy() -> None:
    rng = np.random.default_rng(0)
    ref = np.sort(rng.normal(size=5000))
    cur = rng.normal(0.1, 1.0, size=(5, 300))
    d, _ = window_stats(ref, cur)
    for row, got in zip(cur, d, strict=True):
        assert got == pytest.approx(stats.ks_2samp(ref, row).statistic, abs=1e-12)


# -- the distributions against scipy ----------------------------------------------------------


def test_kolmogorov_tail_matches_scipy() -> None:
    for x in np.r_[0.0, np.linspace(0.05, 7.0, 300)]:
        assert kolmogorov_sf(float(x)) == pytest.approx(
            stats.kstwobign.sf(x), rel=1e-10, abs=1e-300
        )
    assert ks_pvalue(0.1, 10_000, 500) == pytest.approx(
        stats.kstwobign.sf(0.1 * math.sqrt(10_000 * 500 / 10_500)), rel=1e-10
    )


def test_chi2_tail_matches_scipy() -> None:
    for df in (1, 2, 3, 7, 9, 49, 63, 300):
        for x in np.linspace(0.01, 3 * df + 60, 97):
            assert chi2_sf(float(x), df) == pytest.approx(stats.chi2.sf(x, df), rel=1e-9)


# -- false alarms under stationarity ---------------------------------------------------------


@pytest.fixture(scope="module")
def stationary_day() -> tuple[Array, Array]:
    """One day of 10 s windows, 20 features, n = 200 per window (the minimum sample, the
    worst case: the significance gate binds), each feature against its own fixed
    reference of 10,000 values. KS and PSI are distribution-free under stationarity, so
    uniform values stand for any continuous feature."""
    rng = np.random.default_rng(20240610)
    n, chunk = 200, 2160
    d = np.empty((WINDOWS_PER_DAY, FEATURES))
    psi = np.empty_like(d)
    for f in range(FEATURES):
        ref = np.sort(rng.random(10_000))
        for s in range(0, WINDOWS_PER_DAY, chunk):
            d[s : s + chunk, f], psi[s : s + chunk, f] = window_stats(ref, rng.random((chunk, n)))
    return d, psi


def test_a_stationary_day_raises_at_most_one_alarm(stationary_day: tuple[Array, Array]) -> None:
    d, psi = stationary_day
    rule = DriftRule()
    alarm = DriftAlarm(rule)
    names = [f"f{j}" for j in range(FEATURES)]
    drifting = onsets = 0
    was = dict.fromkeys(names, False)
    for t in range(WINDOWS_PER_DAY):
        out = alarm.update(
            {
                name: Numeric(psi=float(psi[t, j]), ks=float(d[t, j]), n_ref=10_000, n_cur=200)
                for j, name in enumerate(names)
            }
        )
        for name, fd in out.items():
            drifting += bool(fd.drifting)
            onsets += bool(fd.alarm) and not was[name]
            was[name] = bool(fd.alarm)
    p1, per_day = expected_false_alarms_per_day(200, 10_000)
    assert (p1, round(per_day, 3)) == (0.0005, 0.043)
    # the single-window rate: at most alpha / m (the asymptotic Kolmogorov tail is a little
    # conservative at n = 200), with room for Poisson noise around 86 expected
    expected = p1 * WINDOWS_PER_DAY * FEATURES
    assert 0.5 * expected < drifting < expected + 4 * math.sqrt(expected), drifting
    assert onsets <= 1  # expected 0.043


def test_consecutive_windows_are_independent_enough(stationary_day: tuple[Array, Array]) -> None:
    """The p1**2 law behind the daily rate, checked where it can be counted: at a level of
    5 % per window, pairs of consecutive rejections match p1**2 within noise (windows
    share the reference, which could correlate them; at 10,000 reference values it
    barely does)."""
    d, _ = stationary_day
    n_e = 10_000 * 200 / 10_200
    p = stats.kstwobign.sf(np.sqrt(n_e) * d)
    hits = p < 0.05
    p1 = hits.mean()
    assert 0.035 < p1 < 0.055
    pairs = (hits[1:] & hits[:-1]).sum()
    expected = p1**2 * (WINDOWS_PER_DAY - 1) * FEATURES
    assert abs(pairs - expected) < 4 * math.sqrt(expected) + 0.1 * expected, (pairs, expected)


def test_the_rate_table_of_the_docs() -> None:
    rates = {n: expected_false_alarms_per_day(n, 10_000) for n in (200, 500, 1000)}
    assert rates[200][0] == 0.0005
    assert rates[500][0] == pytest.approx(1.46e-4, rel=0.01)
    assert rates[500][1] == pytest.approx(0.0037, rel=0.02)
    assert rates[1000][1] < 1e-9
    assert expected_false_alarms_per_day(150, 10_000) == (0.0, 0.0)


@pytest.mark.parametrize(
    ("categories", "concentration", "n_ref", "n_cur"),
    [
        (8, 2.0, 5_000, 500),  # counts large enough for the chi-square
        (64, 50.0, 10_000, 200),  # ~3 values a category: the worst case for JS
        (64, 1.0, 1_000, 200),  # skewed, many nearly empty categories
        (2, 50.0, 10_000, 2_000),
    ],
)
def test_categorical_significance_is_conservative(
    categories: int, concentration: float, n_ref: int, n_cur: int
) -> None:
    """8 ln(2) n_e JS**2 / js_scale against chi-square(K-1), JS the base-2 distance:
    under stationarity it rejects no more often than the level, where the unscaled
    statistic rejects far too often when categories hold few values."""
    rng = np.random.default_rng(categories * 1000 + n_cur)
    reps = 20_000
    probs = rng.dirichlet(np.ones(categories) * concentration)
    ref = rng.multinomial(n_ref, probs, size=reps) / n_ref
    cur = rng.multinomial(n_cur, probs, size=reps) / n_cur
    js = jensenshannon(ref, cur, base=2, axis=1)
    judge = DriftRule(alpha=0.5).judge
    p = np.array([judge(Categorical(float(j), n_ref, n_cur, categories)).p_value for j in js])
    for level in (0.05, 0.005, 5e-4):
        rate = (p < level).mean()
        assert rate <= level + 3 * math.sqrt(level / reps), (level, rate)
    if concentration > 10 and categories == 64:  # why js_scale exists
        raw = DriftRule(alpha=0.5, js_scale=1.0).judge
        unscaled = np.array([raw(Categorical(float(j), n_ref, n_cur, 64)).p_value for j in js])
        assert (unscaled < 5e-4).mean() > 10 * 5e-4


def test_categorical_noise_is_not_drift() -> None:
    rng = np.random.default_rng(9)
    n_ref, n_cur = 5_000, 500
    # with 64 categories JS >= 0.1 is what noise looks like at n = 500; the gate holds
    rule = DriftRule()
    probs = rng.dirichlet(np.ones(64))
    ref = rng.multinomial(n_ref, probs, size=2_000) / n_ref
    cur = rng.multinomial(n_cur, probs, size=2_000) / n_cur
    js = jensenshannon(ref, cur, base=2, axis=1)
    assert (js >= rule.js_min).mean() > 0.5
    judged = [rule.judge(Categorical(float(j), n_ref, n_cur, 64), 20).drifting for j in js]
    assert not any(judged)
    assert not any(rule.judge(Categorical(float(j), n_ref, n_cur), 20).drifting for j in js)
    noisy = Categorical(js=0.12, n_ref=5_000, n_cur=500, categories=64)
    assert rule.judge(noisy, family=20).drifting is False
    assert rule.judge(Categorical(js=0.12, n_ref=5_000, n_cur=500), 20).drifting is False
    assert rule.judge(Categorical(js=0.12, n_ref=5_000, n_cur=500, categories=4), 20).drifting


# -- power: an injected shift is caught within two windows ------------------------------------


def test_a_realistic_shift_alarms_on_its_second_window_and_nowhere_else() -> None:
    """20 normal features, windows of 500, reference of 10,000; from window 10 feature f3
    moves by half a standard deviation (PSI ~0.25, D ~0.2): the alarm is up at window 11,
    the second drifting window, and on f3 only. A categorical feature shifts too."""
    rng = np.random.default_rng(11)
    refs = [np.sort(rng.normal(size=10_000)) for _ in range(FEATURES)]
    probs = np.array([0.4, 0.3, 0.2, 0.1])
    moved = np.array([0.25, 0.3, 0.25, 0.2])
    ref_counts = rng.multinomial(10_000, probs) / 10_000
    alarm = DriftAlarm()
    first: dict[str, int] = {}
    for t in range(30):
        window: dict[str, NumericStats | CategoricalStats] = {}
        for j, ref in enumerate(refs):
            cur = rng.normal(0.5 if (j == 3 and t >= 10) else 0.0, 1.0, size=(1, 500))
            d, psi = window_stats(ref, cur)
            window[f"f{j}"] = Numeric(float(psi[0]), float(d[0]), 10_000, 500)
        counts = rng.multinomial(500, moved if t >= 10 else probs) / 500
        js = float(jensenshannon(counts, ref_counts, base=2))
        window["region"] = Categorical(js, 10_000, 500, categories=4)
        for name, fd in alarm.update(window).items():
            if fd.alarm:
                first.setdefault(name, t)
    assert first == {"f3": 11, "region": 11}


def test_no_evidence_neither_counts_nor_resets() -> None:
    alarm = DriftAlarm()
    moved = Numeric(psi=0.4, ks=0.25, n_ref=10_000, n_cur=500)
    thin = Numeric(psi=0.4, ks=0.25, n_ref=10_000, n_cur=50)
    out = [alarm.update({"f": s})["f"] for s in (moved, thin, moved, thin)]
    assert [(o.drifting, o.alarm, o.streak) for o in out] == [
        (True, False, 1),
        (None, None, 1),
        (True, True, 2),
        (None, None, 2),
    ]
    restored = DriftAlarm.from_json(json.loads(json.dumps(alarm.to_json())))
    assert restored.update({"f": moved})["f"].streak == 3
    assert restored.update({"f": Numeric(0.01, 0.02, 10_000, 500)})["f"].alarm is False
    assert restored.to_json()["streaks"] == {}
    assert "too few samples" in DriftRule().judge(thin).reason


def test_the_effect_size_gate() -> None:
    rule = DriftRule()
    # a million values make D = 0.02 highly significant, but too small to matter
    tiny = Numeric(psi=0.01, ks=0.02, n_ref=1_000_000, n_cur=1_000_000)
    judged = rule.judge(tiny)
    assert judged.p_value is not None and judged.p_value < 1e-100
    assert judged.drifting is False
    # a large PSI with a significant D drifts even when D is under its own threshold
    spread = Numeric(psi=0.3, ks=0.09, n_ref=100_000, n_cur=5_000)
    assert rule.judge(spread, family=20).drifting is True
    assert rule.judge(Numeric(math.nan, math.nan, 1000, 1000)).drifting is None


# -- ADWIN ---------------------------------------------------------------------------------


def river_detections(values: list[float], **params: Any) -> list[int]:
    adwin = ADWIN(**params)
    found = []
    for i, v in enumerate(values):
        adwin.update(v)
        if adwin.drift_detected:
            found.append(i)
    return found


def shifted(seed: int, size: int, every: int) -> list[float]:
    rng = np.random.default_rng(seed)
    level = np.repeat(rng.normal(0, 1, size // every + 1), every)[:size]
    return [float(x) for x in level + rng.normal(0, 0.3, size)]


def test_the_detector_flags_the_changes_river_flags() -> None:
    values = shifted(1, 500, 120)
    det = ChangeDetector()
    got = [i for i, v in enumerate(values) if det.update(v)]
    assert got == river_detections(values, clock=1)
    assert len(got) >= 2


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    restores=st.lists(st.integers(0, 1999), max_size=6),
    max_history=st.sampled_from([64, 512]),
)
def test_restore_by_replay_detects_what_an_uninterrupted_detector_does(
    seed: int, restores: list[int], max_history: int
) -> None:
    values = shifted(seed, 2000, 150)
    values[seed % 2000] = math.nan  # a window without evidence
    params = {"max_history": max_history}
    live = ChangeDetector(**params)
    want = [i for i, v in enumerate(values) if live.update(v)]
    det = ChangeDetector(**params)
    got = []
    for i, v in enumerate(values):
        if i in restores:
            det = ChangeDetector.from_json(json.loads(json.dumps(det.to_json())), **params)
        if det.update(v):
            got.append(i)
    assert got == want
    assert len(det.history) <= max_history


def test_detectors_by_name_survive_json() -> None:
    a, b = shifted(3, 600, 100), shifted(4, 600, 250)
    live = ChangeDetectors()
    want = [live.update({"ks:price": x, "ks:rooms": y}) for x, y in zip(a, b, strict=True)]
    dets = ChangeDetectors()
    got = []
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        if i % 97 == 0:
            dets = ChangeDetectors.from_json(json.loads(json.dumps(dets.to_json())))
        got.append(dets.update({"ks:price": x, "ks:rooms": y}))
    assert got == want
    assert any("ks:price" in w for w in want) and any("ks:rooms" in w for w in want)


def test_adwin_on_the_scaled_statistic_is_quiet_on_a_stationary_day(
    stationary_day: tuple[Array, Array],
) -> None:
    d, psi = stationary_day
    rule = DriftRule()
    dets = ChangeDetectors()
    changes = 0
    for t in range(WINDOWS_PER_DAY):
        values = {
            f"f{j}": rule.scaled(Numeric(float(psi[t, j]), float(d[t, j]), 10_000, 200))
            for j in range(FEATURES)
        }
        changes += len(dets.update(values))
    assert changes == 0


def test_adwin_catches_a_small_shift_the_alarm_lets_pass() -> None:
    """0.1 sigma (D ~0.04 at 500 values a window): no alarm; ADWIN on sqrt(n_e) D sees it
    within ~30 windows (measured 21-46); on raw D it does not within 100."""
    rng = np.random.default_rng(5)
    ref = np.sort(rng.normal(size=10_000))
    d0, p0 = window_stats(ref, rng.normal(0.0, 1.0, size=(300, 500)))
    d1, p1 = window_stats(ref, rng.normal(0.1, 1.0, size=(100, 500)))
    rule, alarm = DriftRule(), DriftAlarm()
    scaled, raw = ChangeDetector(), ChangeDetector()
    found_scaled, found_raw, alarms = [], [], 0
    for t, (d, psi) in enumerate(zip(np.r_[d0, d1], np.r_[p0, p1], strict=True)):
        stats_ = Numeric(float(psi), float(d), 10_000, 500)
        if scaled.update(rule.scaled(stats_)):
            found_scaled.append(t)
        if raw.update(float(d)):
            found_raw.append(t)
        alarms += bool(alarm.update({"f": stats_}, family=20)["f"].alarm)
    assert alarms == 0
    assert found_raw == []
    assert len(found_scaled) >= 1 and 300 <= found_scaled[0] <= 360, found_scaled


def test_the_scaled_statistic() -> None:
    rule = DriftRule()
    assert rule.scaled(Numeric(0.1, 0.05, 10_000, 500)) == pytest.approx(
        math.sqrt(10_000 * 500 / 10_500) * 0.05
    )
    assert rule.scaled(Numeric(0.1, 0.05, 10_000, 50)) is None
    assert rule.scaled(Numeric(math.nan, math.nan, 10_000, 500)) is None
    cat = Categorical(0.2, 1_000, 1_000, 4)
    chi2 = 8 * 500 * 0.04 * math.log(2) / rule.js_scale
    assert rule.scaled(cat) == pytest.approx(math.sqrt(chi2))
