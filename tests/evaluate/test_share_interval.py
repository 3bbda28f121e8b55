"""Agreement, a share, is judged against its bar on Clopper-Pearson's exact interval: a slice whose true
agreement is below the bar passes at most 2.5% of the time, checked here by enumerating every outcome
of n examples (no simulation). The percentile bootstrap it replaces passed a slice truly at 84.9% on 30
examples 4.7% of the time against an 85% bar (29 of 30 gave [85.5%, 100%])."""

import math

import pytest

from potstill.config import QualityBar
from potstill.evaluate.exact import beta_quantile, betainc, clopper_pearson, share_interval
from potstill.evaluate.slices import slice_table


def binom_pmf(n: int, k: int, p: float) -> float:
    return math.comb(n, k) * p ** k * (1 - p) ** (n - k)


def test_the_incomplete_beta_function_by_its_identities():
    for n in (1, 5, 30, 200):
        for k in range(1, n + 1):
            for p in (0.01, 0.3, 0.84, 0.97):
                # P(Binomial(n, p) >= k) = I_p(k, n - k + 1): the identity Clopper-Pearson rests on
                tail = math.fsum(binom_pmf(n, j, p) for j in range(k, n + 1))
                assert betainc(k, n - k + 1, p) == pytest.approx(tail, abs=1e-12)
    for a, x in ((0.3, 0.2), (2.5, 0.7), (40.0, 0.99)):
        assert betainc(a, 1, x) == pytest.approx(x ** a, rel=1e-12)  # I_x(a, 1) = x^a
        assert betainc(1, a, x) == pytest.approx(1 - (1 - x) ** a, rel=1e-12)  # I_x(1, b) = 1 - (1 - x)^b
        assert betainc(a, 3.5, x) == pytest.approx(1 - betainc(3.5, a, 1 - x), abs=1e-14)
    for q, a, b in ((0.025, 29, 2), (0.975, 3.5, 7.5), (0.025, 0.2, 10.8), (0.5, 1e5, 3.0)):
        assert betainc(a, b, beta_quantile(q, a, b)) == pytest.approx(q, abs=1e-9)


def test_clopper_pearson_against_published_values():
    # Clopper and Pearson's 5 of 10: [0.187, 0.813]; 0 of 10: [0, 0.308]
    assert clopper_pearson(5, 10) == (pytest.approx(0.18709, abs=1e-5), pytest.approx(0.81291, abs=1e-5))
    assert clopper_pearson(0, 10) == (0.0, pytest.approx(0.30850, abs=1e-5))
    # with none missed it is 0.025^(1/n) in closed form (30 of 30: 0.884, README rule 1)
    assert clopper_pearson(30, 30) == (pytest.approx(0.025 ** (1 / 30), rel=1e-12), 1.0)
    assert clopper_pearson(29, 30)[0] == pytest.approx(0.82783, abs=1e-5)  # the review's exact bound, 0.828
    assert clopper_pearson(28, 30) == (pytest.approx(0.77926, abs=1e-5), pytest.approx(0.99182, abs=1e-5))
    ci = share_interval([1.0] * 28 + [0.0] * 2)
    assert ci == {"value": pytest.approx(28 / 30), "lo": pytest.approx(0.77926, abs=1e-5),
                  "hi": pytest.approx(0.99182, abs=1e-5), "n": 30, "method": "clopper-pearson"}
    assert share_interval([])["value"] is None
    # a share of fields (JSON agreement) is a sum of scores: 29 whole and a half sits between 29 and 30 of 30
    half = share_interval([1.0] * 29 + [0.5])
    assert clopper_pearson(29, 30)[0] < half["lo"] < clopper_pearson(30, 30)[0]


def _verdicts(n: int, bar: float) -> list[dict]:
    """The verdict row of a slice of n examples with k of them agreeing, for every k (min_slice_n 1)."""
    return [slice_table([[] for _ in range(n)], [1.0] * k + [0.0] * (n - k), None, [None] * n, [None] * n,
                        QualityBar(min_agreement=bar), 1, 1000, 0)[0] for k in range(n + 1)]


@pytest.mark.parametrize("n", [10, 20, 30, 60])
def test_a_slice_below_its_bar_passes_at_most_2_5_percent_of_the_time_by_exact_enumeration(n):
    for bar in (0.5, 0.85, 0.95):
        rows = _verdicts(n, bar)
        passes = [k for k, r in enumerate(rows) if r["verdict"] == "pass"]
        fails = [k for k, r in enumerate(rows) if r["verdict"] == "fail"]
        for i in range(1, 400):
            p = i / 400
            p_pass = math.fsum(binom_pmf(n, k, p) for k in passes)
            p_fail = math.fsum(binom_pmf(n, k, p) for k in fails)
            if p < bar:
                assert p_pass <= 0.025, (n, bar, p, p_pass, passes[:1])
            if p >= bar:
                assert p_fail <= 0.025, (n, bar, p, p_fail)
            # and the interval covers the true share at least 95% of the time, whatever it is
            cover = math.fsum(binom_pmf(n, k, p) for k, r in enumerate(rows)
                              if r["agreement"]["lo"] <= p <= r["agreement"]["hi"])
            assert cover >= 0.95, (n, p, cover)


def test_29_of_30_does_not_pass_an_85_percent_bar():
    # [82.8%, 99.9%] straddles it; the bootstrap's [85.5%, 100%] passed it
    r = _verdicts(30, 0.85)[29]
    assert r["verdict"] == "inconclusive" and r["agreement"]["lo"] == pytest.approx(0.8278, abs=1e-4)
