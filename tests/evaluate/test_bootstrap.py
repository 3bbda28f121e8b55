"""The bootstrap intervals cover the true value about 95% of the time on synthetic data."""

import numpy as np
import pytest

from potstill.evaluate.bootstrap import bootstrap_gap, bootstrap_mean


def coverage(draw, truth: float, reps: int = 200, gap: bool = False) -> float:
    rng = np.random.default_rng(12345)
    hits = 0
    for rep in range(reps):
        if gap:
            a, b = draw(rng)
            ci = bootstrap_gap(a, b, n_boot=1000, seed=rep)
        else:
            ci = bootstrap_mean(draw(rng), n_boot=1000, seed=rep)
        hits += ci["lo"] <= truth <= ci["hi"]
    return hits / reps


def test_mean_of_bernoulli_agreement_is_covered_about_95_percent():
    # 150 examples agreeing with the teacher with probability 0.8, like a per-slice agreement.
    cov = coverage(lambda rng: (rng.random(150) < 0.8).astype(float), 0.8)
    assert 0.91 <= cov <= 0.98, cov


def test_mean_of_skewed_scores_is_covered_about_95_percent():
    # chrF-like scores in [0, 1] from a Beta(2, 5): mean 2/7.
    cov = coverage(lambda rng: rng.beta(2, 5, 200), 2 / 7)
    assert 0.91 <= cov <= 0.98, cov


def test_paired_gap_is_covered_about_95_percent():
    # Teacher right w.p. 0.9; the student copies the teacher except on 15% of inputs, where it is wrong:
    # true gap = 0.9 * 0.85 - 0.9 = -0.135.
    def draw(rng):
        t = (rng.random(200) < 0.9).astype(float)
        s = t * (rng.random(200) >= 0.15)
        return s, t

    cov = coverage(draw, -0.135, gap=True)
    assert 0.91 <= cov <= 0.98, cov


def test_interval_shape():
    ci = bootstrap_mean([1, 1, 1, 1])
    assert ci == {"value": 1.0, "lo": 1.0, "hi": 1.0, "n": 4}
    assert bootstrap_mean([])["value"] is None
    ci = bootstrap_mean([0, 1] * 50, seed=3)
    assert ci["lo"] < 0.5 < ci["hi"] and ci["hi"] - ci["lo"] == pytest.approx(0.2, abs=0.04)  # ~ 2 x 1.96 x 0.05
    with pytest.raises(ValueError):
        bootstrap_gap([1, 2], [1])
