"""The gold ratio, which decides every slice with gold, is bounded like the gap where the student scores
exactly what the teacher scores on every example: the resamples alone said [1, 1] and passed 3 of 3."""

import pytest

from potstill.config import QualityBar
from potstill.evaluate.bootstrap import bootstrap_ratio
from potstill.evaluate.slices import slice_table


def _row(s: list[float], t: list[float], min_n: int) -> dict:
    n = len(s)
    return slice_table([[] for _ in range(n)], [1.0] * n, None, s, t, QualityBar(), min_n, 1000, 0)[0]


def test_a_student_identical_to_the_teacher_on_3_of_3_is_not_passed():
    r = _row([1.0] * 3, [1.0] * 3, 3)
    rel = r["gold"]["relative"]
    q = 0.025 ** (1 / 3)  # the gap's exact bound for 3 pairs that all differ by 0: [-(1 - q), 1 - q]
    assert (rel["value"], rel["lo"], rel["hi"]) == (1.0, pytest.approx(q), pytest.approx(2 - q))
    assert (r["judged_on"], r["verdict"]) == ("gold", "inconclusive")


def test_the_ratio_bound_is_the_gap_bound_over_the_teacher_mean():
    q = 0.025 ** (1 / 30)
    r = bootstrap_ratio([1.0] * 30, [1.0] * 30)
    assert (r["lo"], r["hi"]) == (pytest.approx(q), pytest.approx(2 - q))  # [0.884, 1.116]
    # Both right on the same 20 of 30: gap [-0.116, +0.116] over the teacher's 2/3.
    r = bootstrap_ratio([1.0] * 20 + [0.0] * 10, [1.0] * 20 + [0.0] * 10)
    assert (r["lo"], r["hi"]) == (pytest.approx(1 - 1.5 * (1 - q)), pytest.approx(1 + 1.5 * (1 - q)))
    assert _row([1.0] * 20 + [0.0] * 10, [1.0] * 20 + [0.0] * 10, 30)["verdict"] == "inconclusive"
    # A student at 0 where the teacher is right on every example: not [0, 0]. A gap of -1 is a score of
    # (d + 1) / 2 = 0 to bootstrap_gap, at most 1 - q, so the gap is at most -1 + 2 (1 - q).
    r = bootstrap_ratio([0.0] * 30, [1.0] * 30)
    assert r["value"] == 0 and r["lo"] == 0 and r["hi"] == pytest.approx(2 * (1 - q))
