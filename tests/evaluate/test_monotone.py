"""A better sample of the same size never gets a worse verdict: the all-equal sample's exact bound was
wider than the percentile interval of a sample one example worse, so 30 judge ties were inconclusive
while 29 ties and a loss passed, and 20 of 20 agreeing was inconclusive while 19 of 20 passed."""

from potstill.config import QualityBar
from potstill.evaluate.slices import slice_table

RANK = {"fail": 0, "inconclusive": 1, "pass": 2}
BARS = (0.3, 0.45, 0.5, 0.7, 0.85, 0.95)


def _slice(n: int, bar: QualityBar, agree=None, scores=None, s_gold=None, t_gold=None) -> dict:
    rows = slice_table([[] for _ in range(n)], agree or [0.0] * n, None, s_gold or [None] * n, t_gold or [None] * n,
                       bar, 1, 1000, 0, judge_scores=scores, judge_flips=[False] * n if scores else None)
    return rows[0]


def _no_worse(better: dict, worse: dict, key: str) -> None:
    assert RANK[better["verdict"]] >= RANK[worse["verdict"]], (better[key], worse[key])
    assert better[key]["lo"] >= worse[key]["lo"] and better[key]["hi"] >= worse[key]["hi"], (better[key], worse[key])


def test_agreement_verdicts_never_drop_as_agreement_rises():
    for n in (5, 20, 30):
        for b in BARS:
            bar = QualityBar(min_agreement=b)
            rows = [_slice(n, bar, agree=[1.0] * x + [0.0] * (n - x)) for x in range(n + 1)]
            for worse, better in zip(rows, rows[1:]):
                _no_worse(better, worse, "agreement")
    bar = QualityBar(min_agreement=0.85)
    assert _slice(20, bar, agree=[1.0] * 20)["verdict"] == "inconclusive"
    assert _slice(20, bar, agree=[1.0] * 19 + [0.0])["verdict"] == "inconclusive"  # passed


def test_judge_verdicts_never_drop_as_a_loss_becomes_a_tie_or_a_tie_a_win():
    n = 20
    for b in (0.3, 0.45, 0.5, 0.7):
        bar = QualityBar(min_judge_score=b)
        row = {}
        for w in range(n + 1):
            for t in range(n + 1 - w):
                row[w, t] = _slice(n, bar, scores=[1.0] * w + [0.5] * t + [0.0] * (n - w - t))
        for (w, t), r in row.items():
            if w + t < n:
                _no_worse(row[w, t + 1], r, "judge_score")  # a loss became a tie
            if t:
                _no_worse(row[w + 1, t - 1], r, "judge_score")  # a tie became a win
    bar = QualityBar()  # min_judge_score 0.45, the default
    assert _slice(30, bar, scores=[0.5] * 30)["verdict"] == "inconclusive"
    assert _slice(30, bar, scores=[0.5] * 29 + [0.0])["verdict"] == "inconclusive"  # passed
    assert _slice(30, bar, scores=[0.5] * 28 + [1.0, 0.0])["verdict"] == "inconclusive"  # passed


def test_gold_ratio_verdicts_never_drop_as_the_student_gets_more_right():
    # The teacher right on 20 of 30; the student right on a of those and b of the other 10.
    n, t = 30, [1.0] * 20 + [0.0] * 10
    for b in (0.8, 0.95, 1.0):
        bar = QualityBar(min_relative_quality=b)
        row = {(a, c): _slice(n, bar, s_gold=[1.0] * a + [0.0] * (20 - a) + [1.0] * c + [0.0] * (10 - c), t_gold=t)
               for a in range(0, 21, 2) for c in range(0, 11, 2)}
        for (a, c), r in row.items():
            for up in ((a + 2, c), (a, c + 2)):
                if up in row:
                    better, worse = row[up]["gold"]["relative"], r["gold"]["relative"]
                    assert RANK[row[up]["verdict"]] >= RANK[r["verdict"]], (up, a, c)
                    assert better["lo"] >= worse["lo"] and better["hi"] >= worse["hi"], (up, a, c)
