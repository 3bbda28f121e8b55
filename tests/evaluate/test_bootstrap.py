"""The bootstrap intervals cover the true value about 95% of the time on synthetic data, and the
verdict built on them errs as often as it claims."""

import numpy as np
import pytest

from potstill.config import QualityBar
from potstill.evaluate.bootstrap import bootstrap_gap, bootstrap_mean, bootstrap_ratio
from potstill.evaluate.slices import judge


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


def test_a_share_with_no_miss_is_not_certain():
    """30 of 30 agreeing resampled to 30 of 30 every time: the interval [1, 1] covered a true 0.99 only
    when a sample happened to miss (26% of them here: 0.99^30 = 74% are all ones), and a slice passed
    its bar on that. The exact binomial bound covers it."""
    cov = coverage(lambda rng: (rng.random(30) < 0.99).astype(float), 0.99)
    assert cov >= 0.95, cov
    assert bootstrap_mean([1] * 30)["lo"] == pytest.approx(0.025 ** (1 / 30))  # 0.884
    assert bootstrap_mean([0] * 30)["hi"] == pytest.approx(1 - 0.025 ** (1 / 30))


def test_a_score_every_example_shares_is_not_certain():
    """A judge calling all 30 pairs a tie scored 0.5 with the interval [0.5, 0.5]: every resample of
    one value is that value. 30 ties say that a tie comes at least 88.4% of the time (0.025^(1/30)),
    the rest anywhere in [0, 1]: [0.442, 0.558]; 3 ties say little. Covered on 20 draws that tie with
    probability 0.97, the rest losses (true score 0.485): 54% of such samples are all ties (0.97^20),
    each of which the interval [0.5, 0.5] missed."""
    ci = bootstrap_mean([0.5] * 30)
    q = 0.025 ** (1 / 30)
    assert ci | {"resampled": None} == {"value": 0.5, "lo": pytest.approx(0.5 * q), "hi": pytest.approx(0.5 * q + 1 - q),
                                        "n": 30, "method": "bootstrap", "resampled": None, "floor": "mean"}
    assert ci["lo"] == pytest.approx(0.442, abs=1e-3)
    ci = bootstrap_mean([0.5] * 3)
    assert ci["lo"] < 0.15 and ci["hi"] > 0.85
    assert bootstrap_mean([0.5] * 30, unit=False)["lo"] == 0.5  # a gap is no share: left as it was
    cov = coverage(lambda rng: np.where(rng.random(20) < 0.97, 0.5, 0.0), 0.485)
    assert cov >= 0.95, cov


def test_a_gap_every_pair_shares_is_not_certain():
    """A challenger right on 20 of 20 where the champion was wrong on all gained +100% [+100%, +100%]:
    no resample of one difference differs. (d + 1) / 2 is bounded as a shared score."""
    q = 0.025 ** (1 / 20)
    ci = bootstrap_gap([1] * 20, [0] * 20)
    assert (ci["value"], ci["lo"], ci["hi"], ci["n"]) == (1.0, pytest.approx(2 * q - 1), 1.0, 20)
    ci = bootstrap_gap([1] * 30, [1] * 30)
    assert ci["value"] == 0 and ci["lo"] == pytest.approx(-0.116, abs=1e-3) and ci["hi"] == pytest.approx(0.116, abs=1e-3)
    ci = bootstrap_gap([0.5] * 10, [0.25] * 10)
    assert ci["lo"] < 0.25 < ci["hi"]


def test_interval_shape():
    ci = bootstrap_mean([1, 1, 1, 1])
    assert (ci["value"], ci["lo"], ci["hi"], ci["n"]) == (1.0, pytest.approx(0.025 ** 0.25), 1.0, 4)
    assert (ci["method"], ci["resampled"], ci["floor"]) == ("bootstrap", [1.0, 1.0], "mean")  # for interval_at
    assert bootstrap_mean([])["value"] is None
    ci = bootstrap_mean([0, 1] * 50, seed=3)
    assert ci["lo"] < 0.5 < ci["hi"] and ci["hi"] - ci["lo"] == pytest.approx(0.2, abs=0.04)  # ~ 2 x 1.96 x 0.05
    with pytest.raises(ValueError):
        bootstrap_gap([1, 2], [1])


def test_paired_ratio_is_covered_about_95_percent():
    # Teacher right w.p. 0.8; the student copies it, and also gets right 25% of the teacher's misses:
    # true ratio = (0.8 + 0.2 x 0.25) / 0.8 = 0.85 / 0.8 = 1.0625.
    def draw(rng):
        t = (rng.random(200) < 0.8).astype(float)
        s = np.maximum(t, (rng.random(200) < 0.25).astype(float))
        return s, t

    rng, hits = np.random.default_rng(7), 0
    for rep in range(200):
        ci = bootstrap_ratio(*draw(rng), n_boot=1000, seed=rep)
        hits += ci["lo"] <= 1.0625 <= ci["hi"]
    assert 0.91 <= hits / 200 <= 0.98, hits
    assert bootstrap_ratio([1, 0], [0, 0])["value"] is None  # the teacher never right: no ratio
    with pytest.raises(ValueError):
        bootstrap_ratio([1, 2], [1])


def test_a_slice_exactly_at_the_bar_is_failed_or_passed_about_2_5_percent_of_the_time():
    # The verdict claims a fail only when the 95% interval lies wholly below the bar: for a student whose
    # true agreement is the bar itself, each one-sided error should be ~2.5% (and the rest inconclusive).
    bar = QualityBar(min_agreement=0.85)
    rng, seen = np.random.default_rng(3), {"pass": 0, "fail": 0, "inconclusive": 0}
    for rep in range(400):
        x = (rng.random(150) < 0.85).astype(float)
        seen[judge(bootstrap_mean(x, seed=rep), None, bar, 30)["verdict"]] += 1
    assert seen["fail"] / 400 <= 0.05 and seen["pass"] / 400 <= 0.05, seen
    assert seen["inconclusive"] / 400 >= 0.9, seen


def test_resamples_where_the_teacher_scores_0_are_counted_not_dropped():
    """The teacher right on 1 of 40 inputs and the student right on that one: (39/40)^40 = 36% of
    resamples miss it, 0 / 0, and were dropped, so every kept resample gave exactly 1 and the
    interval was [100%, 100%], wholly above a 95% bar on one example. Those resamples say nothing:
    the lower bound takes them at 0 and the upper at no bound, so the slice is inconclusive."""
    teacher = [1.0] + [0.0] * 39
    r = bootstrap_ratio(teacher, teacher, n_boot=1000, seed=0)
    assert r["value"] == 1.0 and r["lo"] == 0.0 and r["hi"] is None
    assert 300 <= r["teacher_zero"] <= 420  # ~ 1000 x 0.36, counted
    g = {"n": 40, "student": 1 / 40, "teacher": 1 / 40, "relative": r}
    row = judge(r | {"value": 0.9}, g, QualityBar(), 30)  # agreement 90% (reported only: gold decides)
    assert (row["judged_on"], row["verdict"]) == ("gold", "inconclusive")
    assert "[0.0%, no upper bound]" in row["reason"]
    from potstill.evaluate.html import _ci

    assert _ci(r) == "100.0% <span class='small'>[0.0%, ∞]</span>"  # report.html's table
    # The student also right on a second input: a resample that misses the teacher's one but holds the
    # student's is a ratio of +inf (the top of the distribution), not a gap in it: no upper bound either,
    # where dropping them cut the upper end down to the finite ratios.
    r = bootstrap_ratio([1.0, 1.0] + [0.0] * 38, teacher, n_boot=1000, seed=0)
    assert r["value"] == 2.0 and r["hi"] is None
    # A ratio the student is below the bar on and whose upper end is unbounded: no sample size to promise.
    low = bootstrap_ratio([0.0] * 40, [1.0] * 2 + [0.0] * 38, n_boot=1000, seed=0)
    assert (low["value"], low["lo"], low["hi"]) == (0.0, 0.0, None)  # (38/40)^40 = 13% of resamples are 0 / 0
    row = judge({"value": 0.9, "lo": 0.85, "hi": 0.95, "n": 40}, {"n": 40, "student": 0.0, "teacher": 0.05,
                                                                   "relative": low}, QualityBar(), 30)
    assert row["verdict"] == "inconclusive" and row["settle_n"] is None and "no upper bound" in row["reason"]
    # Where the teacher always scores, nothing changes: no resample has a teacher mean of 0.
    assert bootstrap_ratio([1, 1, 0, 1], [1, 1, 1, 1], n_boot=200)["teacher_zero"] == 0
