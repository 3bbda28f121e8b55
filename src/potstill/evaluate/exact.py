"""The exact (Clopper-Pearson) interval of a share, and the Beta functions it needs, in pure Python.

A slice's agreement with the teacher is a share: k of n examples agree. Clopper and Pearson (1934)
bound it by the p at which k or more (k or fewer) agreeing in n would happen only 2.5% of the time:

    lo = the 2.5% quantile of Beta(k, n - k + 1),    hi = the 97.5% quantile of Beta(k + 1, n - k)

(0 at k = 0, 1 at k = n), since P(Binomial(n, p) >= k) = I_p(k, n - k + 1), I the regularized
incomplete beta function. It is the interval whose coverage is at least 95% at every true share:
however the share sits against a bar, a slice below it passes at most 2.5% of the time. The
percentile bootstrap it replaces for shares passed a slice truly at 84.9% agreement 4.7% of the time
on 30 examples against an 85% bar (29 of 30 gave [85.5%, 100%]; Clopper-Pearson [82.8%, 99.9%]).
Wilson's score interval is narrower, but its coverage dips below 95% for some true shares, near 0
and 1 most, where the bars sit.

JSON agreement is a share of fields, not a 0/1 outcome: k is the sum of the per-example scores, a
real number, and the same Beta quantiles bound it. A mean of scores in [0, 1] varies no more than
a binomial share of the same mean does (a score in [0, 1] of mean m has variance at most m(1 - m)),
so the interval is wide enough; and one method for the measure, whatever values a sample happens
to hold, keeps the verdict monotone: the interval only rises with k.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

_TINY = 1e-300


def _continued_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of I_x(a, b), by the modified Lentz method (Numerical Recipes, 6.4);
    converges quickly for x < (a + 1) / (a + b + 2), in O(sqrt(max(a, b))) terms."""
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > _TINY else _TINY)
    h = d
    for m in range(1, 100_000):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),  # the even step, then the odd one
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > _TINY else _TINY)
            c = 1.0 + num / c
            c = c if abs(c) > _TINY else _TINY
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def _log_front(a: float, b: float, x: float) -> float:
    """log of x^a (1 - x)^b / B(a, b)."""
    return math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)


def betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b) = P(Beta(a, b) <= x), for a, b > 0."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(_log_front(a, b, x))
    if x < (a + 1) / (a + b + 2):
        return front * _continued_fraction(a, b, x) / a
    return 1.0 - front * _continued_fraction(b, a, 1.0 - x) / b  # I_x(a, b) = 1 - I_{1-x}(b, a)


def beta_quantile(q: float, a: float, b: float) -> float:
    """The x with I_x(a, b) = q: Newton's steps on the Beta density, kept inside a shrinking bracket
    (a step that leaves it bisects instead), to about 1e-13."""
    lo, hi, x = 0.0, 1.0, a / (a + b)
    for _ in range(200):
        f = betainc(a, b, x) - q
        if f == 0.0:
            return x
        lo, hi = (x, hi) if f < 0 else (lo, x)
        if hi - lo < 1e-13:
            break
        dens = math.exp(_log_front(a, b, x)) / (x * (1.0 - x))  # x^(a-1) (1-x)^(b-1) / B(a, b)
        step = x - f / dens if dens > 0 else -1.0
        x = step if lo < step < hi else (lo + hi) / 2
    return x


def clopper_pearson(k: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """The exact interval of k successes in n (k may be fractional: a sum of scores in [0, 1])."""
    if n <= 0:
        raise ValueError("clopper_pearson: no examples")
    tail = (1 - confidence) / 2
    k = min(max(float(k), 0.0), float(n))
    lo = 0.0 if k <= 0 else beta_quantile(tail, k, n - k + 1)
    hi = 1.0 if k >= n else beta_quantile(1 - tail, k + 1, n - k)
    return lo, hi


def binomial_tail(k: int, n: int, p: float) -> float:
    """P(Binomial(n, p) >= k) = I_p(k, n - k + 1): how often k or more of n trials succeed at a share p."""
    return 1.0 if k <= 0 else 0.0 if k > n else betainc(k, n - k + 1, p)


def share_interval(values: Sequence[float], confidence: float = 0.95) -> dict[str, Any]:
    """Mean of per-example scores in [0, 1] (a share: agreement with the teacher) with its exact 95%
    interval, {value, lo, hi, n, method}, in the form of ``bootstrap_mean``'s."""
    v = [float(x) for x in values]
    n = len(v)
    if n == 0:
        return {"value": None, "lo": None, "hi": None, "n": 0, "method": "clopper-pearson"}
    k = math.fsum(v)
    lo, hi = clopper_pearson(k, n, confidence)
    return {"value": k / n, "lo": lo, "hi": hi, "n": n, "method": "clopper-pearson"}
