"""An anytime-valid confidence sequence for a mean: the one the verdicts read.

A fixed-n confidence interval is valid once, at a sample size chosen in advance; read
after every window and acted on the first time it excludes 0, it promotes far more often
than its level says (the peeking problem). A *confidence sequence* holds at every n at
once: with probability at least ``1 - alpha``, the true mean is inside the interval at
every n, simultaneously. So the evaluator may read it after every window, and stop the
first time it excludes 0, without inflating false promotions.

This is the *asymptotic confidence sequence* of Waudby-Smith, Arbour, Sinha, Kennedy and
Ramdas, "Time-uniform central limit theory and asymptotic confidence sequences" (Annals
of Statistics, 2024; arXiv:2103.06476), Theorem 2.2 / eq. (2.5): with the running mean
``m_n`` and standard deviation ``s_n`` of n observations,

    m_n  +/-  s_n * sqrt( 2 (n rho^2 + 1) / (n^2 rho^2) * log( sqrt(n rho^2 + 1) / alpha ) )

It is two-sided at level ``alpha``. ``rho > 0`` is free; it sets the n where the width is
smallest. :func:`rho_for` takes the paper's choice (its Appendix B.2): the ``rho`` that
minimises the width at a planned ``n*``,
``rho = sqrt( (-2 log alpha + log(-2 log alpha + 1)) / n* )``. The interval is valid at
every n whatever ``n*`` is; ``n*`` only moves where it is tightest.

It is the Gaussian mixture boundary of Robbins, as in Howard, Ramdas, McAuliffe and Sekhon
("Time-uniform, nonparametric, nonasymptotic confidence sequences", 2021, eq. (14)), with
intrinsic time ``v = n s_n^2`` and their mixture parameter ``s_n^2 / rho^2``; the tests
check it against their package ``confseq`` on that identity.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["Interval", "half_width", "interval", "rho_for"]


def rho_for(planned_n: float, alpha: float) -> float:
    """The ``rho`` that makes the boundary tightest at ``n = planned_n`` (paper, App. B.2).

    >>> round(rho_for(20_000, 0.05), 5)
    0.01992
    """
    if planned_n <= 0:
        raise ValueError(f"planned_n must be > 0, got {planned_n}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    a = -2.0 * math.log(alpha)
    return math.sqrt((a + math.log(a + 1.0)) / planned_n)


def half_width(
    n: npt.ArrayLike, sigma: npt.ArrayLike, alpha: float, rho: float
) -> npt.NDArray[np.float64]:
    """Half the width of the asymptotic confidence sequence at ``n`` observations.

    Vectorized over ``n`` and ``sigma`` (the simulation tests evaluate it at every n of
    hundreds of runs at once).

    >>> float(half_width(10_000, 1.0, 0.05, rho_for(10_000, 0.05))).__round__(5)
    0.03035
    """
    n_ = np.asarray(n, dtype=np.float64)
    nr2 = n_ * rho * rho
    return np.asarray(sigma, dtype=np.float64) * np.sqrt(
        2.0 * (nr2 + 1.0) / (n_ * n_ * rho * rho) * np.log(np.sqrt(nr2 + 1.0) / alpha)
    )


@dataclass(frozen=True)
class Interval:
    """The confidence sequence at one n: the estimate and its two bounds."""

    n: int
    estimate: float
    lower: float
    upper: float
    #: the sample standard deviation the width was computed with
    sigma: float


def interval(n: int, total: float, total_sq: float, alpha: float, planned_n: float) -> Interval:
    """The confidence sequence for the mean from a count, a sum and a sum of squares.

    Exactly what mergeable partials carry, so any split of the data gives the same
    interval. The standard deviation is the sample one (denominator ``n - 1``); it needs
    ``n >= 2``.

    >>> iv = interval(4, 2.0, 2.0, 0.05, 100)
    >>> iv.estimate, round(iv.sigma, 6)
    (0.5, 0.57735)
    """
    if n < 2:
        raise ValueError(f"a confidence sequence needs n >= 2 observations, got {n}")
    mean = total / n
    var = max(0.0, (total_sq - total * mean) / (n - 1))
    sigma = math.sqrt(var)
    w = float(half_width(n, sigma, alpha, rho_for(planned_n, alpha)))
    return Interval(n=n, estimate=mean, lower=mean - w, upper=mean + w, sigma=sigma)
