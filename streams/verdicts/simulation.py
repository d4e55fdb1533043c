"""Simulated comparisons: how often the verdict decides, and when (issue 8's settings).

Each run draws absolute errors ``|N(0, 1)|`` for the primary and ``|N(0, (1 - e)^2)|`` for
the candidate (standard deviation ``1 - e``), independent, reads the verdict after every
``step`` pairs up to ``n_max``, and stops at the first PROMOTE or REJECT, as the evaluator
does. The candidate's true mean loss is lower by ``e * sqrt(2 / pi)``. Used by the unit
tests (which assert the rates) and ``bench/verdicts.py`` (which prints them).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from streams.verdicts.decide import Decision, Evidence, Policy, decide

__all__ = ["Rates", "simulate"]


@dataclass(frozen=True)
class Rates:
    """What ``runs`` simulated comparisons decided."""

    runs: int
    promote: float
    reject: float
    #: PROMOTE within ``within`` pairs
    promote_within: float
    within: int
    #: median pairs to a PROMOTE (nan if none)
    median_n: float

    def __str__(self) -> str:
        return (
            f"PROMOTE {self.promote:.1%}, REJECT {self.reject:.1%}, PROMOTE within "
            f"{self.within} {self.promote_within:.1%}, median pairs to PROMOTE {self.median_n:.0f}"
        )


def simulate(
    e: float,
    *,
    runs: int = 500,
    n_max: int = 20_000,
    step: int = 100,
    seed: int = 0,
    policy: Policy | None = None,
    within: int | None = None,
) -> Rates:
    """Rates of ``runs`` simulated comparisons with a loss gain ``e`` (see the module)."""
    rng = np.random.default_rng(seed)
    policy = policy or Policy()
    found: list[tuple[Decision, int]] = []
    for _ in range(runs):
        d = np.abs(rng.normal(0.0, 1.0 - e, n_max)) - np.abs(rng.normal(0.0, 1.0, n_max))
        sums, squares = np.cumsum(d), np.cumsum(d * d)
        outcome = (Decision.CONTINUE, n_max)
        for n in range(step, n_max + 1, step):
            # guardrail figures well within the default budgets: only the statistic decides
            ev = Evidence(
                n=n,
                sum=float(sums[n - 1]),
                sumsq=float(squares[n - 1]),
                p99_latency_ms=10.0,
                error_rate=0.0,
                predictions=1_000_000,
            )
            v = decide(ev, policy)
            if v.decision is not Decision.CONTINUE:
                outcome = (v.decision, n)
                break
        found.append(outcome)
    promoted = [n for d_, n in found if d_ is Decision.PROMOTE]
    limit = n_max if within is None else within
    return Rates(
        runs=runs,
        promote=len(promoted) / runs,
        reject=sum(d_ is Decision.REJECT for d_, _ in found) / runs,
        promote_within=sum(n <= limit for n in promoted) / runs,
        within=limit,
        median_n=float(np.median(promoted)) if promoted else float("nan"),
    )
