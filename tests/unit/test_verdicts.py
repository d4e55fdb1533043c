"""The verdict statistic and decisions, without a broker.

- The confidence sequence's half-width equals ``confseq``'s two-sided normal mixture
  boundary (values computed with confseq 0.0.11 and checked in, see
  ``data/make_confseq_reference.py``) to a relative 1e-12, and a direct numpy evaluation
  of the published formula to 1e-12.
- Simulations (issue 8): 500 runs per setting, the verdict read after every 100 pairs up to
  20,000: A/A decides in at most 5% of runs; e = 0.03 promotes in at least 80%; e = 0.05
  promotes in at least 95% within 10,000.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from streams.verdicts import confseq, decide
from streams.verdicts.confseq import half_width, interval, rho_for
from streams.verdicts.decide import Decision, Evidence, Policy
from streams.verdicts.simulation import simulate

REFERENCE = Path(__file__).with_name("data") / "confseq_reference.json"


def test_half_width_matches_confseq() -> None:
    ref = json.loads(REFERENCE.read_text())
    rows = np.array(ref["rows"], dtype=np.float64)
    n, sigma, alpha, planned, expected = rows.T
    ours = np.array(
        [
            float(half_width(ni, si, ai, rho_for(pi, ai)))
            for ni, si, ai, pi in zip(n, sigma, alpha, planned, strict=True)
        ]
    )
    assert len(rows) == 252
    np.testing.assert_allclose(ours, expected, rtol=1e-12, atol=0)


def test_interval_matches_published_formula_on_data() -> None:
    """Mean, sample sd and width from the sums equal numpy's on the same draws."""
    rng = np.random.default_rng(3)
    x = rng.normal(0.2, 1.5, 5_000)
    alpha, planned = 0.05, 2_000
    for n in (2, 17, 100, 2_000, 5_000):
        iv = interval(n, float(x[:n].sum()), float((x[:n] ** 2).sum()), alpha, planned)
        mean, sd = x[:n].mean(), x[:n].std(ddof=1)
        # Waudby-Smith et al. 2024, eq. (2.5), rho from their Appendix B.2, typed afresh
        rho2 = (-2 * np.log(alpha) + np.log(-2 * np.log(alpha) + 1)) / planned
        w = sd * np.sqrt(2 * (n * rho2 + 1) / (n**2 * rho2) * np.log(np.sqrt(n * rho2 + 1) / alpha))
        assert iv.estimate == pytest.approx(mean, rel=1e-12, abs=1e-15)
        assert iv.sigma == pytest.approx(sd, rel=1e-9)
        assert iv.lower == pytest.approx(mean - w, rel=1e-9, abs=1e-12)
        assert iv.upper == pytest.approx(mean + w, rel=1e-9, abs=1e-12)


def test_tightest_at_planned_n() -> None:
    """rho_for(n*) minimises the width at n* (over a grid of other rho)."""
    alpha, planned = 0.05, 10_000
    best = float(half_width(planned, 1.0, alpha, rho_for(planned, alpha)))
    for factor in (0.5, 0.8, 1.25, 2.0):
        other = float(half_width(planned, 1.0, alpha, rho_for(planned, alpha) * factor))
        assert best < other


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="n >= 2"):
        interval(1, 1.0, 1.0, 0.05, 100)
    with pytest.raises(ValueError, match="alpha"):
        rho_for(100, 1.5)
    with pytest.raises(ValueError, match="alpha"):
        Policy(alpha=0.0)


GOOD = {"p99_latency_ms": 20.0, "error_rate": 0.001, "predictions": 10_000}


def test_no_labels_continue() -> None:
    v = decide.decide(Evidence(**GOOD), Policy())
    assert (v.decision, v.reason, v.interval) == (Decision.CONTINUE, "no labels", None)


def test_too_few_pairs_continue() -> None:
    v = decide.decide(Evidence(n=50, sum=-50.0, sumsq=60.0, **GOOD), Policy())
    assert v.decision is Decision.CONTINUE
    assert "fewer than the 100" in v.reason


def test_promote_reject_continue_on_the_statistic() -> None:
    better = decide.decide(Evidence(n=10_000, sum=-500.0, sumsq=10_000.0, **GOOD), Policy())
    assert better.decision is Decision.PROMOTE and better.interval is not None
    assert better.interval.upper < 0
    worse = decide.decide(Evidence(n=10_000, sum=500.0, sumsq=10_000.0, **GOOD), Policy())
    assert worse.decision is Decision.REJECT and "loss higher" in worse.reason
    same = decide.decide(Evidence(n=10_000, sum=-10.0, sumsq=10_000.0, **GOOD), Policy())
    assert same.decision is Decision.CONTINUE and "no difference shown yet" in same.reason


def test_guardrails_reject_and_say_which() -> None:
    policy = Policy(latency_budget_ms=50.0, error_rate_budget=0.01)
    better = {"n": 10_000, "sum": -500.0, "sumsq": 10_000.0, "predictions": 1_000}
    slow = decide.decide(Evidence(p99_latency_ms=80.0, error_rate=0.0, **better), policy)
    assert slow.decision is Decision.REJECT
    assert slow.breached == ("p99 latency 80.0 ms over budget 50 ms",)
    flaky = decide.decide(Evidence(p99_latency_ms=10.0, error_rate=0.05, **better), policy)
    assert flaky.decision is Decision.REJECT
    assert flaky.breached == ("error rate 5.00% over budget 1.00%",)
    # too few predictions to judge a p99: not a breach yet
    early = decide.decide(Evidence(p99_latency_ms=80.0, predictions=10), policy)
    assert (early.decision, early.reason) == (Decision.CONTINUE, "no labels")


def test_bonferroni_widens_each_interval() -> None:
    ev = Evidence(n=5_000, sum=-150.0, sumsq=5_000.0, **GOOD)
    one = decide.decide(ev, Policy(), candidates=1)
    four = decide.decide(ev, Policy(), candidates=4)
    assert four.alpha == pytest.approx(0.0125)
    assert one.interval is not None and four.interval is not None
    assert four.interval.lower < one.interval.lower < one.interval.upper < four.interval.upper


# -- simulations (issue 8) -----------------------------------------------------------------


def test_simulation_aa_rarely_decides() -> None:
    r = simulate(0.0, seed=11)
    print(f"e=0: {r}")
    assert r.promote + r.reject <= 0.05


def test_simulation_small_gain_promotes() -> None:
    r = simulate(0.03, seed=12)
    print(f"e=0.03: {r}")
    assert r.promote >= 0.80 and r.reject == 0


def test_simulation_clear_gain_promotes_within_10000() -> None:
    r = simulate(0.05, seed=13, within=10_000)
    print(f"e=0.05: {r}")
    assert r.promote_within >= 0.95


def test_doctests() -> None:
    import doctest

    for module in (confseq, decide):
        result = doctest.testmod(module)
        assert result.attempted > 0 and result.failed == 0
