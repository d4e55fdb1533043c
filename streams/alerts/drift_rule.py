"""The drift alarm rule, with its false-alarm rate under control, and ADWIN over time.

Why a rule and not a test: with 20 features and a window every 10 s there are 172,800
(feature, window) tests a day. A plain per-window test at 5 % fires ~8,640 times a day on
data that never changed, and even an effect-size threshold alone (KS D >= 0.1) fires all
day on small windows, where D is noisy. The rule below needs all of:

1. **evidence**: both the reference and the window hold at least ``min_samples`` values;
2. **a size that matters**: KS ``D >= ks_min`` or ``PSI >= psi_min`` (numeric), or
   Jensen-Shannon distance ``>= js_min`` (categorical);
3. **significance, corrected for the number of features**: the two-sample KS p-value
   (asymptotic Kolmogorov distribution at ``n_e = n_ref * n_cur / (n_ref + n_cur)``), or
   for a categorical feature the chi-square p-value of ``8 ln(2) * n_e * js**2 / js_scale``
   with ``categories - 1`` degrees of freedom, below ``alpha / m`` where ``m`` is the number of
   features judged in the window (Bonferroni);

and then the **alarm** needs ``consecutive`` such drifting windows in a row. A window
without evidence (too few samples, a missing statistic) neither counts nor resets the run.

Expected false alarms under stationarity (independent windows, reference much larger than
a window): a feature drifts by chance in a window with probability
``p1 = min(Q(sqrt(n_e) * ks_min), alpha / m)`` where ``Q(x) = 2 sum_k (-1)**(k-1)
exp(-2 k**2 x**2)`` is the Kolmogorov tail, and an alarm starts with probability about
``p1**consecutive``; so per day ``windows_per_day * m * p1**consecutive``
(:func:`expected_false_alarms_per_day`). With the defaults, 20 features, 10 s windows and a
reference of 10,000 values: n = 200 gives ``p1 = 5e-4`` (the significance gate binds) and
0.043 false alarms a day, one in 23 days; n = 500 gives ``p1 = 1.5e-4`` (the D gate binds)
and 0.0037 a day; n = 1000 gives ``p1 = 2.5e-8``, none. ``docs/drift-and-alerts.md`` has
the derivation and the simulation that checks it, and what a small reference does to it.
The ``ks`` of :mod:`streams.metrics.drift` is computed from sketches and is a lower bound
of the raw-sample D (bucketing also makes ties): that errs on the side of fewer alarms.

The Jensen-Shannon distance is the one :mod:`streams.metrics.drift` computes: base 2, in
``[0, 1]`` (``scipy.spatial.distance.jensenshannon(p, q, base=2)``); its square is the
divergence in bits, ``ln 2`` times that in nats, and ``8 * n_e`` times the divergence in nats
is the chi-square statistic of homogeneity to second order. Only to second order: a
category with a small expected count in the window (0.5 to 5 values) adds up to 1.36 to
the statistic's null mean and 3.6 to its variance where a chi-square term adds 1 and 2 (the
JS term of an empty cell is 2.8 times Pearson's), so the raw statistic against
chi-square(K-1) rejects 5 to 46 times too often at the per-window level with 64 categories
of ~3 expected values each. Dividing it by ``js_scale`` = 1.35, the Satterthwaite scale
``variance / (2 mean)`` of that worst case, made every case simulated (2 to 64 categories,
even to very skewed, 200 to 2,000 values a window) conservative at the 5 %, 0.5 % and
0.05 % levels. The degrees of freedom need the number of categories; a statistic without
a ``categories`` attribute is taken to have 65 (the joiner's cap of 64 values plus the
overflow), which is never too few, so never too bold, but costs power on features with few
values.

**Change over time.** :class:`ChangeDetector` runs river's ADWIN on one monitored statistic
window by window: a feature's drift statistic on its null scale (:meth:`DriftRule.scaled`,
``sqrt(n_e) * D``), so that it catches small sustained shifts the alarm rule lets pass.
Its state must survive a SIGKILL as JSON, and river's objects are not JSON; so the
detector is *defined* as a fresh ADWIN fed its ``history``, the values since it was last
seeded, in order. It keeps at most ``max_history`` values: when one more arrives, the
oldest are dropped down to ``max_history // 2`` and a fresh ADWIN is seeded by replaying
the rest (what it detects while replaying is not reported: it was reported when those
values came). A restore replays the same history into the same parameters, so a restored
detector is the same detector, and reports exactly what an uninterrupted one reports. Up
to the first trim it is river's ADWIN run directly on the sequence. The detector sees at
most the last ``max_history`` windows (85 minutes at 10 s windows for the default 512).

Example
-------
>>> alarm = DriftAlarm()
>>> quiet = Numeric(psi=0.01, ks=0.03, n_ref=10_000, n_cur=500)
>>> moved = Numeric(psi=0.35, ks=0.2, n_ref=10_000, n_cur=500)
>>> [alarm.update({"price": moved, "rooms": quiet})["price"].alarm for _ in range(3)]
[False, True, True]
>>> alarm.update({"price": quiet})["price"].alarm
False
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol

__all__ = [
    "Categorical",
    "CategoricalStats",
    "ChangeDetector",
    "ChangeDetectors",
    "DriftAlarm",
    "DriftRule",
    "FeatureDrift",
    "Judgement",
    "Numeric",
    "NumericStats",
    "chi2_sf",
    "expected_false_alarms_per_day",
    "kolmogorov_sf",
    "ks_pvalue",
]

#: Version of the JSON forms of :class:`DriftAlarm` and :class:`ChangeDetector`.
STATE_VERSION: Final = 1


class NumericStats(Protocol):
    """Drift statistics of a numeric feature or output in one window, vs the reference."""

    @property
    def psi(self) -> float: ...
    @property
    def ks(self) -> float: ...
    @property
    def n_ref(self) -> int: ...
    @property
    def n_cur(self) -> int: ...


class CategoricalStats(Protocol):
    """Drift statistics of a categorical feature in one window, vs the reference.

    ``js`` is the Jensen-Shannon distance in base :attr:`DriftRule.js_base` (2, as
    :mod:`streams.metrics.drift` computes it). An object may also carry ``categories``, the
    number of distinct values (the overflow bucket included) in the two samples together:
    the degrees of freedom of the significance gate, plus one. Without it,
    :attr:`DriftRule.assumed_categories` stands in (more is more cautious).
    """

    @property
    def js(self) -> float: ...
    @property
    def n_ref(self) -> int: ...
    @property
    def n_cur(self) -> int: ...


Stats = NumericStats | CategoricalStats


@dataclass(frozen=True)
class Numeric:
    """A plain :class:`NumericStats` (tests, docs, callers without one of their own)."""

    psi: float
    ks: float
    n_ref: int
    n_cur: int


@dataclass(frozen=True)
class Categorical:
    """A plain :class:`CategoricalStats`."""

    js: float
    n_ref: int
    n_cur: int
    categories: int | None = None


# -- distributions, numpy-free even (math only) ----------------------------------------------


def kolmogorov_sf(x: float) -> float:
    """``P(K > x)`` for the Kolmogorov distribution (scipy's ``kstwobign.sf``).

    >>> round(kolmogorov_sf(1.3581), 4)
    0.05
    """
    if x <= 0.0:
        return 1.0
    if x < 1.18:  # the alternating series converges slowly here: use the CDF's theta form
        t = -(math.pi**2) / (8.0 * x * x)
        cdf = (
            math.sqrt(2.0 * math.pi) / x * sum(math.exp((2 * k - 1) ** 2 * t) for k in range(1, 8))
        )
        return max(0.0, 1.0 - cdf)
    total = 0.0
    for k in range(1, 101):
        term = math.exp(-2.0 * k * k * x * x)
        total += term if k % 2 else -term
        if term < 1e-300:
            break
    return min(1.0, 2.0 * total)


def ks_pvalue(d: float, n_ref: int, n_cur: int) -> float:
    """Asymptotic two-sample KS p-value of statistic ``d``: ``Q(sqrt(n_e) * d)``."""
    if n_ref <= 0 or n_cur <= 0:
        return 1.0
    return kolmogorov_sf(math.sqrt(n_ref * n_cur / (n_ref + n_cur)) * d)


def chi2_sf(x: float, df: float) -> float:
    """``P(X > x)`` for a chi-square with ``df`` degrees of freedom (scipy's ``chi2.sf``).

    The regularized upper incomplete gamma ``Q(df/2, x/2)``: its series below ``a + 1``,
    its continued fraction (modified Lentz) above.

    >>> round(chi2_sf(16.919, 9), 4)
    0.05
    """
    if x <= 0.0:
        return 1.0
    a, z = df / 2.0, x / 2.0
    log_front = a * math.log(z) - z - math.lgamma(a)
    if z < a + 1.0:
        term = total = 1.0 / a
        ap = a
        for _ in range(10_000):
            ap += 1.0
            term *= z / ap
            total += term
            if abs(term) < abs(total) * 1e-16:
                break
        return max(0.0, 1.0 - total * math.exp(log_front))
    tiny = 1e-300
    b = z + 1.0 - a
    c = 1.0 / tiny
    d = 1.0 / b
    h = d
    for i in range(1, 10_000):
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1.0 / d
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-16:
            break
    return min(1.0, math.exp(log_front) * h)


# -- the rule ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Judgement:
    """What the rule says about one feature in one window."""

    #: None: no evidence (too few samples, statistic missing)
    drifting: bool | None
    #: the significance gate's p-value (None without evidence)
    p_value: float | None
    #: why, in words
    reason: str


@dataclass(frozen=True)
class DriftRule:
    """The parameters of the drift rule (module docstring) and its per-window judgement."""

    min_samples: int = 200
    ks_min: float = 0.1
    psi_min: float = 0.2
    js_min: float = 0.1
    #: family-wise false-positive level of one window, split over its features
    alpha: float = 0.01
    consecutive: int = 2
    #: categories assumed for a categorical statistic that does not say (the joiner's cap
    #: of 64 distinct values, plus the overflow: never fewer than there are)
    assumed_categories: int = 65
    #: logarithm base of the Jensen-Shannon distances (streams.metrics.drift: 2)
    js_base: float = 2.0
    #: the categorical statistic is divided by this before the chi-square (module docstring)
    js_scale: float = 1.35

    def __post_init__(self) -> None:
        if self.min_samples < 1 or self.consecutive < 1 or self.assumed_categories < 2:
            raise ValueError("min_samples, consecutive >= 1 and assumed_categories >= 2")
        if self.js_base <= 1.0 or self.js_scale <= 0.0:
            raise ValueError("js_base must be > 1 and js_scale > 0")
        if not 0.0 < self.alpha < 1.0:
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha}")

    def judge(self, stats: Stats, family: int = 1) -> Judgement:
        """Whether one feature drifts in one window, ``family`` features being judged."""
        n_ref, n_cur = int(stats.n_ref), int(stats.n_cur)
        if min(n_ref, n_cur) < self.min_samples:
            return Judgement(None, None, f"too few samples ({n_ref} ref, {n_cur} now)")
        level = self.alpha / max(1, family)
        n_e = n_ref * n_cur / (n_ref + n_cur)
        ks_value = getattr(stats, "ks", None)  # numeric (an isinstance on a Protocol is slow)
        if ks_value is not None:
            ks, psi = float(ks_value), float(getattr(stats, "psi", math.nan))
            if math.isnan(ks):
                return Judgement(None, None, "KS statistic missing")
            p = kolmogorov_sf(math.sqrt(n_e) * ks)
            big = ks >= self.ks_min or (not math.isnan(psi) and psi >= self.psi_min)
            size = f"D={ks:.3g} PSI={psi:.3g}"
        else:
            js = float(getattr(stats, "js", math.nan))
            if math.isnan(js):
                return Judgement(None, None, "JS distance missing")
            categories = getattr(stats, "categories", None) or self.assumed_categories
            nats = js * js * math.log(self.js_base)  # the divergence
            chi2 = 8.0 * n_e * nats / self.js_scale
            p = chi2_sf(chi2, max(1, int(categories) - 1))
            big = js >= self.js_min
            size = f"JS={js:.3g}"
        drifting = big and p < level
        verdict = "drifting" if drifting else ("small" if not big else "not significant")
        return Judgement(drifting, p, f"{verdict}: {size} p={p:.3g} level={level:.3g}")

    def scaled(self, stats: Stats) -> float | None:
        """The statistic on the scale of its null distribution: what ADWIN should follow.

        ``sqrt(n_e) * ks`` (mean ~0.87 under stationarity whatever the window size), or
        for a categorical feature the square root of the gate's chi-square statistic. Raw
        D shrinks as ``1 / sqrt(n)``: fed to ADWIN it would see a change of traffic as a
        change of distribution, and its small range makes ADWIN slow (a half-sigma shift
        took ~57 windows, against ~5 scaled). None without evidence, as in :meth:`judge`.
        """
        n_ref, n_cur = int(stats.n_ref), int(stats.n_cur)
        if min(n_ref, n_cur) < self.min_samples:
            return None
        n_e = n_ref * n_cur / (n_ref + n_cur)
        ks = getattr(stats, "ks", None)
        if ks is not None:
            value = math.sqrt(n_e) * float(ks)
        else:
            js = float(getattr(stats, "js", math.nan))
            value = math.sqrt(8.0 * n_e * math.log(self.js_base) / self.js_scale) * js
        return None if math.isnan(value) else value


@dataclass(frozen=True)
class FeatureDrift:
    """One feature's drift in one window: the judgement and the alarm after it."""

    drifting: bool | None
    #: ``consecutive`` drifting windows in a row; None when the window had no evidence
    alarm: bool | None
    #: drifting windows in a row so far (windows without evidence skipped)
    streak: int
    p_value: float | None
    reason: str


class DriftAlarm:
    """The drift rule over windows: per feature, the run of drifting windows.

    State is a plain JSON-able dict (:meth:`to_json`, :meth:`from_json`) for the
    evaluator's table: restored, it continues the runs where they were.
    """

    def __init__(self, rule: DriftRule | None = None) -> None:
        self.rule = rule or DriftRule()
        self._streaks: dict[str, int] = {}

    def update(
        self, stats: Mapping[str, Stats], family: int | None = None
    ) -> dict[str, FeatureDrift]:
        """Judge one window; ``family`` defaults to the number of features in ``stats``."""
        m = family if family is not None else len(stats)
        out = {}
        for name, s in stats.items():
            j = self.rule.judge(s, m)
            streak = self._streaks.get(name, 0)
            if j.drifting is None:
                alarm = None
            else:
                streak = streak + 1 if j.drifting else 0
                alarm = streak >= self.rule.consecutive
                if streak:
                    self._streaks[name] = streak
                else:
                    self._streaks.pop(name, None)
            out[name] = FeatureDrift(j.drifting, alarm, streak, j.p_value, j.reason)
        return out

    def to_json(self) -> dict[str, Any]:
        return {"version": STATE_VERSION, "streaks": dict(sorted(self._streaks.items()))}

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None, rule: DriftRule | None = None) -> DriftAlarm:
        alarm = cls(rule)
        if data:
            alarm._streaks = {str(k): int(v) for k, v in data.get("streaks", {}).items() if v}
        return alarm


def expected_false_alarms_per_day(
    n_cur: int,
    n_ref: int,
    *,
    features: int = 20,
    window_s: float = 10.0,
    rule: DriftRule | None = None,
) -> tuple[float, float]:
    """``(p1, alarms_per_day)`` for numeric features under stationarity.

    ``p1`` is the chance a feature drifts in one window, ``min(Q(sqrt(n_e) * ks_min),
    alpha / features)`` (the PSI branch adds nothing measurable: under stationarity PSI
    reaches 0.2 with probability ~1e-15 at n = 500); an alarm starts where a run of
    ``consecutive`` drifting windows follows a quiet one, so the expected number of alarm
    onsets a day is ``windows * features * p1**consecutive * (1 - p1)``, windows assumed
    independent (a reference much larger than a window).

    >>> p1, per_day = expected_false_alarms_per_day(200, 10_000)
    >>> p1, round(per_day, 3)
    (0.0005, 0.043)
    """
    rule = rule or DriftRule()
    if min(n_cur, n_ref) < rule.min_samples:
        return 0.0, 0.0
    n_e = n_ref * n_cur / (n_ref + n_cur)
    p1 = min(kolmogorov_sf(math.sqrt(n_e) * rule.ks_min), rule.alpha / features)
    windows = 86_400.0 / window_s
    return p1, windows * features * p1**rule.consecutive * (1.0 - p1)


# -- ADWIN over time ------------------------------------------------------------------------------


class ChangeDetector:
    """River's ADWIN on one statistic, window by window, restorable from JSON.

    See the module docstring: the detector is a fresh ADWIN fed :attr:`history`; a restore
    replays it, so restored and uninterrupted detectors report the same changes.
    ``clock=1`` checks for a change at every window (one value per 10 s is cheap).
    """

    def __init__(
        self,
        *,
        delta: float = 0.002,
        clock: int = 1,
        grace_period: int = 10,
        min_window_length: int = 5,
        max_history: int = 512,
    ) -> None:
        if max_history < 2:
            raise ValueError("max_history must be >= 2")
        self.params = {
            "delta": delta,
            "clock": clock,
            "grace_period": grace_period,
            "min_window_length": min_window_length,
        }
        self.max_history = max_history
        self.history: list[float] = []
        self._adwin = self._seeded(())

    def _seeded(self, values: Iterable[float]) -> Any:
        from river.drift import ADWIN

        adwin = ADWIN(**self.params)
        for v in values:
            adwin.update(v)
        return adwin

    def update(self, value: float | None) -> bool:
        """Follow one window's value; True when ADWIN detects a change at it.

        None or NaN (no evidence this window) is skipped: not fed, not remembered.
        """
        if value is None or math.isnan(value):
            return False
        x = float(value)
        self.history.append(x)
        self._adwin.update(x)
        detected = bool(self._adwin.drift_detected)
        if len(self.history) > self.max_history:
            self.history = self.history[-(self.max_history // 2) :]
            self._adwin = self._seeded(self.history)
        return detected

    @property
    def width(self) -> int:
        """How many of the last values ADWIN's window holds now."""
        return int(self._adwin.width)

    def to_json(self) -> dict[str, Any]:
        return {"version": STATE_VERSION, "history": list(self.history)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None, **params: Any) -> ChangeDetector:
        """Rebuild by replaying the history into a detector made with ``params``."""
        det = cls(**params)
        if data:
            det.history = [float(v) for v in data.get("history", ())][-det.max_history :]
            det._adwin = det._seeded(det.history)
        return det


class ChangeDetectors:
    """One :class:`ChangeDetector` per monitored statistic, by name; JSON-able together."""

    def __init__(self, **params: Any) -> None:
        self.params = params
        self.detectors: dict[str, ChangeDetector] = {}

    def update(self, values: Mapping[str, float | None]) -> list[str]:
        """Follow one window's values; the names where a change was detected, sorted."""
        changed = []
        for name, value in values.items():
            det = self.detectors.get(name)
            if det is None:
                det = self.detectors[name] = ChangeDetector(**self.params)
            if det.update(value):
                changed.append(name)
        return sorted(changed)

    def to_json(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "detectors": {n: d.to_json() for n, d in sorted(self.detectors.items())},
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None, **params: Any) -> ChangeDetectors:
        dets = cls(**params)
        for name, item in (data or {}).get("detectors", {}).items():
            dets.detectors[str(name)] = ChangeDetector.from_json(item, **params)
        return dets
