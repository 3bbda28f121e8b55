"""'At the same rate, about N test examples would settle it': N is the fewest examples on which the verdict's
own interval, recomputed at the same rate, no longer straddles the bar. The rule it replaced shrank the
interval as 1/sqrt(n) even where the exact bound (1/n) set it, and asked for 80% power on top: a student
identical to the teacher on 2 examples was told 1,159 (gold ratio) and 129 (agreement) where the same
sample passes from 72 and 23. Checked here against the real slice_table on the sample repeated."""

import math

import pytest

from potstill.config import QualityBar
from potstill.evaluate.exact import clopper_pearson
from potstill.evaluate.slices import slice_table


def row(agree, bar=QualityBar(), s_gold=None, t_gold=None, scores=None) -> dict:
    n = len(agree)
    return slice_table([[] for _ in range(n)], agree, None, s_gold or [None] * n, t_gold or [None] * n, bar, 1, 1000, 0,
                       judge_scores=scores, judge_flips=[False] * n if scores else None)[0]


def identical(n: int, gold: bool) -> dict:
    g = [1.0] * n if gold else None
    return row([1.0] * n, s_gold=g, t_gold=g)


@pytest.mark.parametrize("gold, first", [(True, 72), (False, 23)])
def test_a_student_identical_to_the_teacher_is_told_where_the_same_sample_first_passes(gold, first):
    # gold ratio: [q, 2 - q] with q = 0.025^(1/n) >= 0.95 from n = ln 0.025 / ln 0.95 = 71.9;
    # agreement: Clopper-Pearson's 0.025^(1/n) >= 0.85 from n = ln 0.025 / ln 0.85 = 22.7
    r = identical(2, gold)
    assert (r["verdict"], r["settle_n"]) == ("inconclusive", first)
    assert r["statement"].endswith(f"; at the same rate, about {first} test examples ({first - 2} more) would settle it")
    assert identical(first, gold)["verdict"] == "pass" and identical(first - 1, gold)["verdict"] == "inconclusive"


def test_a_share_is_told_the_exact_size_at_which_its_rate_clears_the_bar():
    bar = QualityBar(min_agreement=0.85)
    r = row([1.0] * 27 + [0.0] * 3, bar)  # 90% [73.5%, 97.9%]
    need = r["settle_n"]
    assert r["verdict"] == "inconclusive" and 60 < need < 600
    assert clopper_pearson(0.9 * need, need)[0] >= 0.85 > clopper_pearson(0.9 * (need - 1), need - 1)[0]
    up, down = 10 * math.ceil(need / 10), 10 * ((need - 1) // 10)  # whole samples at 90%: multiples of 10
    assert row([1.0] * (9 * up // 10) + [0.0] * (up // 10), bar)["verdict"] == "pass"
    assert row([1.0] * (9 * down // 10) + [0.0] * (down // 10), bar)["verdict"] == "inconclusive"
    # below the bar it is where the interval falls wholly under it: 24 of 30 (80%)
    r = row([1.0] * 24 + [0.0] * 6, bar)
    need = r["settle_n"]
    assert clopper_pearson(0.8 * need, need)[1] < 0.85 <= clopper_pearson(0.8 * (need - 1), need - 1)[1]
    up = 5 * math.ceil(need / 5)
    assert row([1.0] * (4 * up // 5) + [0.0] * (up // 5), bar)["verdict"] == "fail"


def test_a_bootstrap_interval_is_told_about_where_its_repeated_sample_settles():
    """The judge's score and the gold ratio keep the bootstrap: its percentile spread shrinks as 1/sqrt(n)
    and its exact floor as 1/n. The sample repeated to well under N stays inconclusive, to well over N passes."""
    scores = [1.0] * 8 + [0.5] * 14 + [0.0] * 8  # 0.5 [0.37, 0.62] against the 0.45 bar
    r = row([0.0] * 30, scores=scores)
    need = r["settle_n"]
    assert r["verdict"] == "inconclusive" and 100 < need < 400, need
    below, above = math.floor(0.7 * need / 30), math.ceil(1.3 * need / 30)
    assert row([0.0] * 30 * below, scores=scores * below)["verdict"] == "inconclusive"
    assert row([0.0] * 30 * above, scores=scores * above)["verdict"] == "pass"
    # the gold ratio: the teacher right on 23 of 30, the student on 21 of those and 4 of the rest (1.087)
    s, t = [1.0] * 21 + [0.0] * 2 + [1.0] * 4 + [0.0] * 3, [1.0] * 23 + [0.0] * 7
    r = row([1.0] * 30, s_gold=s, t_gold=t)
    need = r["settle_n"]
    assert r["verdict"] == "inconclusive" and 40 < need < 200, need
    below, above = math.floor(0.7 * need / 30), math.ceil(1.5 * need / 30)
    assert row([1.0] * 30 * below, s_gold=s * below, t_gold=t * below)["verdict"] == "inconclusive"
    assert row([1.0] * 30 * above, s_gold=s * above, t_gold=t * above)["verdict"] == "pass"
