"""The verdict of one (candidate, primary) comparison: PROMOTE, REJECT or CONTINUE.

Plain logic on a small input, :class:`Evidence`: the count, sum and sum of squares of the
paired loss difference ``candidate loss - primary loss`` on the same labelled requests
(exact sums, mergeable like every other partial statistic), and the candidate's guardrail
figures (p99 latency, error rate). Negative differences mean the candidate is better.

- **REJECT** when a guardrail is breached (its p99 latency or its error rate is over
  budget, once at least ``Policy.guardrail_min`` predictions were measured), or when the
  confidence sequence lies entirely above 0 (the candidate is worse).
- **PROMOTE** when the confidence sequence lies entirely below 0 (the candidate's loss is
  lower) and no guardrail is breached.
- **CONTINUE** otherwise, with the reason: no labels yet, too few labelled pairs, or the
  interval still contains 0.

With ``k`` candidates compared with one primary, each interval is at level ``alpha / k``
(Bonferroni): the probability that *any* of them wrongly excludes 0, at any time, stays
below ``alpha``. See ``docs/verdicts.md``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum

from streams.verdicts.confseq import Interval, interval

__all__ = ["Decision", "Evidence", "Policy", "Verdict", "decide"]


class Decision(StrEnum):
    PROMOTE = "PROMOTE"
    REJECT = "REJECT"
    CONTINUE = "CONTINUE"


@dataclass(frozen=True)
class Evidence:
    """What a verdict is decided on: one comparison's figures so far.

    ``n``, ``sum`` and ``sumsq`` are over the paired loss differences
    (candidate - primary) of the labelled requests both models answered; the guardrail
    figures are the candidate's over the same comparison (None: not measured).
    """

    n: int = 0
    sum: float = 0.0
    sumsq: float = 0.0
    p99_latency_ms: float | None = None
    error_rate: float | None = None
    #: candidate predictions the guardrail figures are measured on
    predictions: int = 0


@dataclass(frozen=True)
class Policy:
    """How verdicts are decided; the evaluator builds it from its configuration."""

    #: family-wise error level over all candidates of one primary
    alpha: float = 0.05
    #: the number of labelled pairs at which the interval is tightest (valid at every n)
    planned_n: int = 10_000
    #: fewer labelled pairs than this: CONTINUE (the interval is asymptotic)
    min_n: int = 100
    #: the candidate's p99 latency must be at most this
    latency_budget_ms: float = 100.0
    #: the candidate's error rate (errors / predictions) must be at most this
    error_rate_budget: float = 0.01
    #: guardrails are judged once the candidate has this many predictions measured
    guardrail_min: int = 500

    def __post_init__(self) -> None:
        if not 0.0 < self.alpha < 1.0:
            raise ValueError(f"verdict alpha must be in (0, 1), got {self.alpha}")
        if self.planned_n < 1 or self.min_n < 2:
            raise ValueError(f"planned_n must be >= 1 and min_n >= 2: {self}")
        if self.latency_budget_ms <= 0 or not 0.0 <= self.error_rate_budget <= 1.0:
            raise ValueError(
                "the latency budget must be > 0 ms and the error-rate budget in [0, 1], got "
                f"{self.latency_budget_ms} and {self.error_rate_budget}"
            )

    def alpha_for(self, candidates: int) -> float:
        """Each candidate's level: Bonferroni over the ``candidates`` compared at once."""
        return self.alpha / max(1, candidates)


@dataclass(frozen=True)
class Verdict:
    """A decision and the evidence it rests on."""

    decision: Decision
    reason: str
    #: the level this candidate's interval was computed at (after the correction)
    alpha: float
    evidence: Evidence
    #: None until ``Policy.min_n`` labelled pairs
    interval: Interval | None = None
    #: the guardrails breached, in words (empty: none)
    breached: tuple[str, ...] = field(default_factory=tuple)


def guardrail_breaches(evidence: Evidence, policy: Policy) -> tuple[str, ...]:
    """Which guardrails ``evidence`` breaches, each in words; empty while too few predictions."""
    if evidence.predictions < policy.guardrail_min:
        return ()
    out = []
    p99 = evidence.p99_latency_ms
    if p99 is not None and math.isfinite(p99) and p99 > policy.latency_budget_ms:
        out.append(f"p99 latency {p99:.1f} ms over budget {policy.latency_budget_ms:g} ms")
    rate = evidence.error_rate
    if rate is not None and rate > policy.error_rate_budget:
        out.append(f"error rate {rate:.2%} over budget {policy.error_rate_budget:.2%}")
    return tuple(out)


def decide(evidence: Evidence, policy: Policy, candidates: int = 1) -> Verdict:
    """The verdict on ``evidence`` with ``candidates`` compared with the same primary.

    >>> v = decide(Evidence(n=10_000, sum=-500.0, sumsq=10_000.0, p99_latency_ms=20.0,
    ...                     error_rate=0.0, predictions=10_000), Policy())
    >>> v.decision, round(v.interval.upper, 3)
    (<Decision.PROMOTE: 'PROMOTE'>, -0.02)
    >>> decide(Evidence(), Policy()).reason
    'no labels'
    """
    alpha = policy.alpha_for(candidates)
    breached = guardrail_breaches(evidence, policy)
    iv = None
    if evidence.n >= policy.min_n:
        iv = interval(evidence.n, evidence.sum, evidence.sumsq, alpha, policy.planned_n)

    def verdict(decision: Decision, reason: str) -> Verdict:
        return Verdict(decision, reason, alpha, evidence, iv, breached)

    if breached:
        return verdict(Decision.REJECT, "guardrail breached: " + "; ".join(breached))
    if evidence.n == 0:
        return verdict(Decision.CONTINUE, "no labels")
    if iv is None:
        return verdict(
            Decision.CONTINUE,
            f"{evidence.n} labelled pairs, fewer than the {policy.min_n} needed",
        )
    where = f"[{iv.lower:.4g}, {iv.upper:.4g}] at n={iv.n}, alpha {alpha:.4g}"
    if iv.upper < 0:
        return verdict(Decision.PROMOTE, f"candidate loss lower: difference in {where}")
    if iv.lower > 0:
        return verdict(Decision.REJECT, f"candidate loss higher: difference in {where}")
    return verdict(Decision.CONTINUE, f"no difference shown yet: difference in {where}")
