"""Percentile bootstrap intervals for a mean and for a paired difference of means (Efron 1979).

Each example is one draw; resampling examples with replacement ``n_boot`` times gives the
distribution of the mean, whose 2.5% and 97.5% quantiles bound a 95% interval. A paired gap
(student minus teacher on the same inputs) resamples the per-example differences, which keeps
the correlation between the two and gives a tighter, correct interval. A paired ratio
(mean(student) / mean(teacher), "the student keeps 98% of the teacher's quality") resamples the
same index set for both and divides the two resampled means (``bootstrap_ratio`` says what a
resample whose teacher mean is 0 counts as).

Monotone: a better sample of the same size never gets a lower bound (or an upper one). The values are
sorted before resampling, so the same seed draws the same positions for both: every resample of the
better sample is at least as good, and so is each quantile. And no interval of scores in [0, 1] is
narrower than ``exact_bound`` of its mean (below), which widens only samples close to all-equal (the
percentile interval is O(1/sqrt(n)) wide, this O(1/n)): without it an all-equal sample got the wide
exact bound and a sample one example worse the narrow percentile one, so 30 judge ties were
inconclusive and 29 ties and a loss passed, 20 of 20 agreeing was inconclusive and 19 of 20 passed.

Each interval keeps what it was made of (``resampled``: the percentile bounds before the floor; ``floor``:
which exact bound), so that ``interval_at`` can say what it would be on more examples at the same rate.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from potstill.evaluate.exact import clopper_pearson


def exact_bound(m: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """The interval of n scores in [0, 1] that all equal m: [m q, 1 - (1 - m) q], q = tail^(1/n).

    n draws all equal to m have probability q^n, q the chance of scoring m, so q >= tail^(1/n) but
    for a chance of tail; the rest of the mass, 1 - q, at 0 or at 1 bounds the mean. For shares
    this is Clopper and Pearson's exact bound (30 of 30: [0.884, 1]); 30 ties are [0.442, 0.558].
    Increasing in m at both ends, so a floor made of it keeps the interval monotone."""
    q = float(((1 - confidence) / 2) ** (1 / n))
    return m * q, 1 - (1 - m) * q


def bootstrap_mean(values: Sequence[float], n_boot: int = 1000, confidence: float = 0.95,
                   seed: int = 0, unit: bool = True) -> dict[str, float | int | None]:
    """Mean of ``values`` with a percentile-bootstrap interval: {value, lo, hi, n}. ``unit``: the
    values are shares or scores in [0, 1] (every caller's), and the interval is at least
    ``exact_bound`` of their mean."""
    x = np.sort(np.asarray(values, dtype=float))  # sorted: see "Monotone" above
    n = len(x)
    if n == 0:
        return {"value": None, "lo": None, "hi": None, "n": 0, "method": "bootstrap"}
    tail = (1 - confidence) / 2
    rng = np.random.default_rng(seed)
    # (n_boot, n) indices at once: 1000 x 1000 int64 is 8 MB, fine for any test split we evaluate.
    means = x[rng.integers(0, n, size=(n_boot, n))].mean(axis=1)
    lo, hi = (float(v) for v in np.quantile(means, [tail, 1 - tail]))
    m = float(x.mean())
    out = {"value": m, "lo": lo, "hi": hi, "n": n, "method": "bootstrap", "resampled": [lo, hi], "floor": None}
    if unit:
        # Every example scoring the same c resamples to [c, c], certainty from a handful of examples
        # (30 of 30 agreeing: [1, 1]); the exact bound of the mean bounds it, and the samples near it.
        e_lo, e_hi = exact_bound(m, n, confidence)
        out.update(lo=min(lo, e_lo), hi=max(hi, e_hi), floor="mean")
    return out


def bootstrap_gap(a: Sequence[float], b: Sequence[float], n_boot: int = 1000, confidence: float = 0.95,
                  seed: int = 0) -> dict[str, float | int | None]:
    """mean(a) - mean(b) over paired examples of scores in [0, 1], with a percentile-bootstrap interval.

    Scores in [0, 1] differ within [-1, 1]; (d + 1) / 2 is a score in [0, 1], bounded as one (at
    least ``exact_bound`` of its mean), and mapped back: a challenger right on all 20 where the
    champion was wrong on all is +1 [+0.664, +1], not [+1, +1]; no difference in 30 pairs is
    [-0.116, +0.116]."""
    if len(a) != len(b):
        raise ValueError(f"paired samples differ in length: {len(a)} vs {len(b)}")
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    if not len(d):
        return {"value": None, "lo": None, "hi": None, "n": 0, "method": "bootstrap"}
    ci = bootstrap_mean((d + 1) / 2, n_boot, confidence, seed, unit=True)
    return {"value": float(d.mean()), "lo": 2 * ci["lo"] - 1, "hi": 2 * ci["hi"] - 1, "n": len(d),
            "method": "bootstrap", "resampled": [2 * r - 1 for r in ci["resampled"]], "floor": "gap"}


def bootstrap_ratio(a: Sequence[float], b: Sequence[float], n_boot: int = 1000, confidence: float = 0.95,
                    seed: int = 0) -> dict[str, float | int | None]:
    """mean(a) / mean(b) over paired examples of non-negative scores, with a percentile-bootstrap
    interval: {value, lo, hi, n, teacher_zero}.

    A resample in which every b is 0 (``teacher_zero`` counts them) has no finite ratio. Where its
    a-mean is above 0 the ratio is +inf: the top of the distribution, not a gap in it. Where both
    are 0 it says nothing either way, so each bound takes it against its own claim: the lower bound
    at 0, the upper at +inf. Dropping both kinds (as this did) kept only resamples in which the
    teacher scored: the teacher right on 1 of 40 inputs and the student on that one, (39/40)^40 = 36%
    of resamples were dropped and every other gave exactly 1, an interval [1, 1] on one example.
    An upper bound that reaches +inf is ``hi`` None (JSON has no infinity); the lower one is finite,
    as a resample misses every positive b with probability at most (1 - 1/n)^n < 1/e.
    """
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(x) != len(y):
        raise ValueError(f"paired samples differ in length: {len(x)} vs {len(y)}")
    if (x < 0).any() or (y < 0).any():
        raise ValueError("bootstrap_ratio: scores must be non-negative (a ratio of means of signed scores is not a share)")
    n = len(x)
    if n == 0 or y.mean() == 0:
        return {"value": None, "lo": None, "hi": None, "n": n, "teacher_zero": None, "method": "bootstrap"}
    # Sorted by the teacher's score, then the student's: a student better on some inputs than another
    # (the teacher's the same) sits in the same positions, each resample's ratio at least as high.
    order = np.lexsort((x, y))
    x, y = x[order], y[order]
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    num, den = x[idx].mean(axis=1), y[idx].mean(axis=1)
    zero = den == 0
    ratios = np.divide(num, den, out=np.full(n_boot, np.inf), where=~zero)
    undecided = zero & (num == 0)
    tail = (1 - confidence) / 2
    lo = _quantile(np.where(undecided, 0.0, ratios), tail)
    hi = _quantile(ratios, 1 - tail)  # 0 / 0 stays +inf here
    out = {"value": float(x.mean() / y.mean()), "n": n, "teacher_zero": int(zero.sum()), "method": "bootstrap",
           "resampled": [lo, hi], "floor": None}
    if x.max() <= 1 and y.max() <= 1:
        # The ratio is 1 + gap / mean(b), so the gap's floor (``exact_bound`` of (d + 1) / 2, as
        # bootstrap_gap) over the teacher's mean bounds it too. Where the student scores what the teacher
        # scores on every example every resample whose teacher scores gave 1, and [1, 1] passed a 0.95
        # bar on 3 examples of 3; now 30 of 30 both right is [0.884, 1.116], 3 of 3 [0.292, 1.708].
        # Never below 0, the scores being non-negative. Scores above 1 are no shares, and the bound is
        # for scores in [0, 1].
        mt = float(y.mean())
        g_lo, g_hi = exact_bound((float((x - y).mean()) + 1) / 2, n, confidence)
        lo = min(lo, max(0.0, 1 + (2 * g_lo - 1) / mt))
        hi = None if hi is None else max(hi, 1 + (2 * g_hi - 1) / mt)
        out.update(floor="ratio", teacher_mean=mt)
    return {**out, "lo": lo, "hi": hi}


def interval_at(ci: dict[str, Any], n: int, confidence: float = 0.95) -> tuple[float, float | None]:
    """The interval ``ci`` would have on ``n`` examples at the same rate: its values repeated to n.

    Clopper-Pearson's (``method`` clopper-pearson) is recomputed exactly at k = n x the share. A
    bootstrap's percentile bounds (``resampled``) are distances from the mean that shrink as
    sqrt(old n / n), the standard error of a mean; its exact-bound ``floor`` is recomputed at n (it
    shrinks as 1/n), for the mean, the paired gap, or the ratio over the teacher's mean. An interval
    without ``resampled`` (a hand-made one, an older eval.json) shrinks as sqrt."""
    m, n0 = ci["value"], ci["n"]
    if ci.get("method") == "clopper-pearson":
        return clopper_pearson(m * n, n, confidence)
    r_lo, r_hi = ci.get("resampled") or (ci["lo"], ci["hi"])
    shrink = math.sqrt(n0 / n)
    lo, hi = m - (m - r_lo) * shrink, None if r_hi is None else m + (r_hi - m) * shrink
    floor = ci.get("floor")
    if floor == "mean":
        e_lo, e_hi = exact_bound(m, n, confidence)
    elif floor == "gap":
        e_lo, e_hi = (2 * e - 1 for e in exact_bound((m + 1) / 2, n, confidence))
    elif floor == "ratio":
        mt = ci["teacher_mean"]  # the gap is mt (ratio - 1), bounded as above, then over mt
        g_lo, g_hi = exact_bound((mt * (m - 1) + 1) / 2, n, confidence)
        e_lo, e_hi = max(0.0, 1 + (2 * g_lo - 1) / mt), 1 + (2 * g_hi - 1) / mt
    else:
        return lo, hi
    return min(lo, e_lo), None if hi is None else max(hi, e_hi)


def _quantile(x: np.ndarray, q: float) -> float | None:
    """``np.quantile(x, q)`` (linear) where ``x`` may hold +inf: None where the quantile reaches one.

    An infinite entry stands in as one above the largest finite value: a quantile that interpolates
    toward it lands above that value (unbounded), one that does not is the same number as before.
    """
    finite = np.isfinite(x)
    top = float(x[finite].max()) if finite.any() else 0.0
    v = float(np.quantile(np.where(finite, x, top + 1.0), q))
    return None if v > top else v
