"""Each evaluate metric against an example worked out by hand (the arithmetic is in the comments)."""

import math

import pytest

from potstill.config import QualityBar, TaskConfig
from potstill.evaluate import break_even, break_even_curve
from potstill.evaluate.metrics import (
    INVALID, accuracy, calibration, chrf, confusion_matrix, exact_match, field_prf, macro_f1, ranks, rouge_l, spearman,
    task_metrics, validity_rate,
)
from potstill.evaluate.slices import length_edges, slice_names, slice_table
from potstill.records import Record
from potstill.tasks.extraction import ExtractionTask


def test_accuracy_skips_missing_references():
    # 4 references: a=a yes, b!=a, a=a yes, None!=b -> 2/4; the 5th has no reference.
    assert accuracy(["a", "b", "a", None, "a"], ["a", "a", "a", "b", None]) == 0.5
    assert accuracy(["a"], [None]) is None


def test_macro_f1_by_hand():
    # a: tp=1 fp=1 fn=0 -> F1 = 2/3;  b: tp=2 fp=0 fn=1 -> F1 = 4/5;  mean = 11/15
    assert macro_f1(["a", "a", "b", "b"], ["a", "b", "b", "b"]) == pytest.approx(11 / 15)
    # an invalid prediction is a miss: a: tp=1 fn=1 -> 2/3; b: tp=0 fp=0 fn=0 is absent; -> 2/3
    assert macro_f1(["a", None], ["a", "a"]) == pytest.approx(2 / 3)


def test_confusion_matrix_rows_are_references():
    cm = confusion_matrix(["a", "b", "b", None], ["a", "a", "b", "b"], ["a", "b"])
    assert cm["cols"] == ["a", "b", INVALID]
    assert cm["counts"] == [[1, 1, 0], [0, 1, 1]]


def test_ece_by_hand():
    # bins (0.8,0.9]: conf .9,.9 acc 1,0 -> |.5-.9|*2/4 = .2;  (0.5,0.6]: |1-.6|*1/4 = .1;
    # (0.3,0.4]: |0-.35|*1/4 = .0875;  ECE = .3875
    cal = calibration([0.9, 0.9, 0.6, 0.35], [1, 0, 1, 0])
    assert cal["ece"] == pytest.approx(0.3875)
    assert [b["n"] for b in cal["bins"]] == [1, 1, 2]
    assert calibration([1.0, 1.0], [1, 1])["ece"] == 0.0  # perfectly confident and right


def test_ece_bins_are_right_closed_tenths_not_one_bin_low():
    """calibration() put c in bin floor(10c) - 1 (int() truncates; the comment said ceil): each bin's
    lo/hi in eval.json, and its bar in the reliability plot, sat one tenth below its confidences (0.95
    drawn at 80-90%, so a calibrated student looked under-confident), and 0.05 and 0.15 shared a bin."""
    # (0.9,1.0]: .95 right -> |1-.95|/2 = .025;  (0.8,0.9]: .85 wrong -> |0-.85|/2 = .425;  ECE = .45
    cal = calibration([0.95, 0.85], [1, 0])
    assert cal["ece"] == pytest.approx(0.45)
    assert [(b["lo"], b["hi"], b["n"]) for b in cal["bins"]] == [(0.8, 0.9, 1), (0.9, 1.0, 1)]
    # (0.0,0.1]: .05 right -> |1-.05|/2 = .475;  (0.1,0.2]: .15 wrong -> |0-.15|/2 = .075;  ECE = .55
    assert calibration([0.05, 0.15], [1, 0])["ece"] == pytest.approx(0.55)
    assert [(b["lo"], b["hi"]) for b in calibration([0.379], [1])["bins"]] == [(0.3, 0.4)]
    # A confidence on a bin edge stays in the bin it closes, whatever 0.7 * 10 rounds to in floating point.
    assert [b["hi"] for b in calibration([0.3, 0.7, 1.0, 0.0], [1, 1, 1, 1])["bins"]] == [0.1, 0.3, 0.7, 1.0]


def test_json_field_metrics_by_hand():
    task = ExtractionTask(TaskConfig(type="extraction", json_schema={"type": "object", "required": ["a"]}))
    preds = [task.parse('{"a": 1, "b": 2}'), task.parse("not json"), task.parse('{"a": 1}')]
    refs = [{"a": 1, "b": 3}, {"a": 1}, {"a": 1}]
    # matching fields: a (1st), none (invalid), a (3rd) -> tp 2; predicted fields 2+0+1 = 3; reference 2+1+1 = 4
    prf = field_prf(preds, refs)
    assert prf["precision"] == pytest.approx(2 / 3) and prf["recall"] == pytest.approx(1 / 2)
    assert prf["f1"] == pytest.approx(4 / 7)  # 2PR/(P+R) = (2/3)/(7/6)
    assert exact_match(preds, refs) == pytest.approx(1 / 3)
    assert validity_rate(preds, task.validate) == pytest.approx(2 / 3)
    m = task_metrics("extraction", preds, refs, validate=task.validate)
    assert m["field_f1"] == pytest.approx(4 / 7) and m["validity_rate"] == pytest.approx(2 / 3)


def test_chrf_by_hand():
    # hyp "ab", ref "abc", orders 1..2. n=1: P=2/2, R=2/3; n=2: P=1/1, R=1/2.
    # mean P=1, mean R=7/12; F2 = 5*P*R/(4P+R) = (35/12)/(55/12) = 7/11
    assert chrf("ab", "abc", max_n=2) == pytest.approx(7 / 11)
    assert chrf("a b", "ab", max_n=2) == pytest.approx(1.0)  # whitespace is ignored
    assert chrf("hello there", "hello there") == pytest.approx(1.0)
    assert chrf("xyz", "abc") == 0.0


def test_rouge_l_and_length_slices_count_each_chinese_japanese_or_thai_character_as_a_word():
    """Found by a Unicode review: ROUGE-L split on white space, so two near-identical Japanese
    summaries (one word each) scored 0, and every Japanese input was one word, all in one length
    slice. A character of a script written without spaces is a word now, as ROUGE's Chinese
    tokenizers count it; English is split as before."""
    import random

    ja = ("東京の天気は晴れで気温は二十度です", "東京の天気は晴れで気温は二十一度です")  # 17 and 18 characters
    lcs = 17  # all of the shorter one
    assert rouge_l(*ja) == pytest.approx(2 * (lcs / 17) * (lcs / 18) / (lcs / 17 + lcs / 18))

    from potstill.evaluate.metrics import _lcs, words

    assert words(ja[0])[:3] == ["東", "京", "の"] and len(words(ja[0])) == 17
    assert words("Tokyo東京 ok。 ภาษา 한국어 문장") == ["Tokyo", "東", "京", "ok", "。", "ภ", "า", "ษ", "า", "한국어", "문장"]
    assert rouge_l("The cat sat", "the cat was on the mat") == pytest.approx(4 / 9)

    def dp(a: list[str], b: list[str]) -> int:  # the textbook table the bit-parallel count replaces
        prev = [0] * (len(b) + 1)
        for x in a:
            cur = [0]
            for j, y in enumerate(b):
                cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
            prev = cur
        return prev[-1]

    rng = random.Random(0)
    for _ in range(300):
        a, b = ([rng.choice("abcd") for _ in range(rng.randrange(0, 30))] for _ in range(2))
        assert _lcs(a, b) == dp(a, b), (a, b)

    texts = ["短い", "少し長めの文", "これはもう少し長い文章です", "これは非常に長い文章で、多くの情報が含まれています"] * 3
    recs = [Record(messages=[{"role": "user", "content": t}]) for t in texts]
    edges = length_edges(recs)
    assert edges == (6, 13)
    assert [slice_names(r, None, edges)[-1] for r in recs[:4]] == [
        "length:short (<=6 words)", "length:short (<=6 words)", "length:medium (7-13 words)", "length:long (>13 words)"]


def test_rouge_l_by_hand():
    # LCS("the cat sat", "the cat was on the mat") = "the cat" = 2; P=2/3, R=2/6; F1 = 2PR/(P+R) = 4/9
    assert rouge_l("the cat sat", "The cat was on the mat") == pytest.approx(4 / 9)
    assert rouge_l("a b c", "a b c") == 1.0
    m = task_metrics("freetext", ["the cat sat", "a b c"], ["the cat was on the mat", "a b c"])
    assert m["rouge_l"] == pytest.approx((4 / 9 + 1) / 2)


def test_spearman_by_hand_and_against_scipys_documented_value():
    """Tied values share the mean of their ranks; the correlation is Pearson's over the ranks."""
    assert list(ranks([10, 20, 20, 30])) == [1, 2.5, 2.5, 4] and list(ranks([3, 1, 2])) == [3, 1, 2]
    assert list(ranks([0.5] * 3)) == [2, 2, 2]
    # scipy.stats.spearmanr's own example, 0.8207826816681233: y's ranks 1, 2, 3.5, 5, 3.5, so against x's
    # 1..5 the deviations are (-2, -1, 0, 1, 2) and (-2, -1, 0.5, 2, 0.5): 8 / sqrt(10 x 9.5) = 0.82078.
    assert spearman([1, 2, 3, 4, 5], [5, 6, 7, 8, 7]) == pytest.approx(8 / math.sqrt(95))
    assert spearman([1, 2, 3, 4, 5], [5, 6, 7, 8, 7]) == pytest.approx(0.8207826816681233, abs=1e-12)
    # Without ties it is 1 - 6 sum(d^2) / (n (n^2 - 1)): ranks 1..5 against 2, 1, 4, 3, 5 -> 1 - 6 x 4 / 120 = 0.8.
    assert spearman([1, 2, 3, 4, 5], [20, 10, 40, 30, 50]) == pytest.approx(0.8)
    assert spearman([1, 2, 3], [9, 5, 1]) == pytest.approx(-1.0) and spearman([1, 2, 3], [1, 4, 9]) == pytest.approx(1.0)
    assert spearman([1, 1, 1], [1, 2, 3]) is None  # one side without an order: no correlation
    with pytest.raises(ValueError):
        spearman([1, 2], [1])


def test_classification_metrics_bundle():
    m = task_metrics("classification", ["a", "b"], ["a", "a"], labels=["a", "b"], confidence=[0.8, 0.7])
    assert m["accuracy"] == 0.5 and m["confusion"]["counts"] == [[1, 1], [0, 0]]
    # bins (0.7,0.8]: |1-.8|/2 = .1; (0.6,0.7]: |0-.7|/2 = .35 -> .45
    assert m["calibration"]["ece"] == pytest.approx(0.45)


def test_break_even_by_hand():
    # saving .01 - .002 = .008 per call; 80 / .008 = 10,000 calls; at 1,000 a month: 10 months
    be = break_even(0.01, 0.002, 80.0, 1000)
    assert be["calls"] == pytest.approx(10_000) and be["months"] == pytest.approx(10.0)
    curve = break_even_curve(0.01, 0.002, 80.0, 1000, be["months"], points=5)
    assert curve["months"] == [0, 5, 10, 15, 20]
    assert curve["teacher_usd"][2] == pytest.approx(curve["student_usd"][2])  # the lines cross at month 10
    assert break_even(0.001, 0.002, 5.0, 10)["calls"] is None


def test_slices_are_cut_and_judged_by_their_intervals():
    recs = [Record(messages=[{"role": "user", "content": " ".join(["w"] * k)}], slice=["x"] if k < 4 else [])
            for k in range(1, 7)]
    edges = length_edges(recs)  # word counts 1..6: cut at the 1/3 and 2/3 points -> 2 and 4
    assert edges == (2, 4)
    names = [slice_names(r, "a" if i % 2 else "b", edges) for i, r in enumerate(recs)]
    assert names[0] == ["tag:x", "label:b", "length:short (<=2 words)"]
    assert names[2][-1] == "length:medium (3-4 words)"
    # A medium third of one length is named so ("6-6 words" before).
    assert slice_names(recs[2], None, (2, 3))[-1] == "length:medium (3 words)"
    bar = QualityBar(min_agreement=0.5, min_relative_quality=None)
    rows = slice_table(names, [1, 1, 1, 1, 0, 0], None, [None] * 6, [None] * 6, bar, min_n=3, n_boot=200)
    by = {r["slice"]: r for r in rows}
    assert rows[0]["slice"] == "all" and by["all"]["agreement"]["value"] == pytest.approx(4 / 6)
    # 3/3 agree: every resample is 1.0, but 3 examples cannot show 50% (the exact bound is [0.29, 1])
    assert by["tag:x"]["verdict"] == "inconclusive" and by["tag:x"]["agreement"]["lo"] == pytest.approx(0.025 ** (1 / 3))
    assert by["label:b"]["verdict"] == "inconclusive"  # examples 0, 2, 4 -> 2/3: resamples range 0 to 1
    assert by["label:b"]["settle_n"] > 3 and by["label:b"]["judged_on"] == "agreement"
    assert by["length:short (<=2 words)"]["verdict"] == "too small"
    assert by["length:short (<=2 words)"]["reason"] == "too small to judge: 2 examples < 3"
    # Six examples where the student never agrees: every resample is 0, the interval [0, 0] lies below 50%.
    rows = slice_table([[]] * 6, [0] * 6, None, [None] * 6, [None] * 6, bar, min_n=3, n_boot=200)
    assert rows[0]["verdict"] == "fail"


def test_gold_ratio_in_slices():
    bar = QualityBar(min_agreement=0.0, min_relative_quality=0.95)
    # student right on 3 of 4, teacher on 4 of 4: gap -25 points, relative quality 75%
    rows = slice_table([[], [], [], []], [1, 1, 1, 1], None, [1, 1, 1, 0], [1, 1, 1, 1], bar, min_n=1, n_boot=200)
    g = rows[0]["gold"]
    assert g["gap"]["value"] == pytest.approx(-0.25) and g["relative"]["value"] == pytest.approx(0.75)
    assert math.isclose(g["teacher"], 1.0) and rows[0]["judged_on"] == "gold"
    # The ratio's resamples run from 0 (all four draws the wrong one) to 1 (none): it straddles 95%.
    assert g["relative"]["lo"] < 0.95 <= g["relative"]["hi"] and rows[0]["verdict"] == "inconclusive"


def test_field_rows_score_each_field_against_the_teacher_and_gold():
    from potstill.evaluate.slices import field_table, output_fields

    teacher = [{"a": 1, "b": 2}, {"a": 1, "b": 3}, {"a": 2}, "not an object"]
    student = [{"a": 1, "b": 2}, {"a": 1, "b": 4}, {"a": 3, "b": 0}, {"a": 1}]
    gold = [{"a": 1, "b": 2}, None, {"a": 2}, None]
    assert output_fields(None, teacher) == ["a", "b"]
    assert output_fields({"properties": {"z": {}, "a": {}}}, teacher) == ["z", "a"]
    bar = QualityBar(min_agreement=0.5, min_relative_quality=None)
    rows = {r["slice"]: r for r in field_table(["a", "b"], student, None, teacher, gold, bar, min_n=1, n_boot=100)}
    # The fourth example has no teacher object and counts nowhere.
    assert rows["field:a"]["n"] == 3 and rows["field:a"]["agreement"]["value"] == pytest.approx(2 / 3)
    # b: equal, different, student adds a field the teacher lacks.
    assert rows["field:b"]["agreement"]["value"] == pytest.approx(1 / 3)
    g = rows["field:a"]["gold"]
    assert (g["n"], g["student"], g["teacher"], g["relative"]["value"]) == (2, 0.5, 1.0, 0.5)


def test_a_student_right_where_the_teacher_never_is_passes_on_gold():
    """A slice whose gold the teacher never gets right has no gold ratio (its mean is 0), and the slice
    was judged on agreement instead: a student right on 30 of its 40 gold labels, and so disagreeing
    with the wrong teacher, failed and was kept on the teacher that gets 0 of 40."""
    bar = QualityBar()  # agreement >= 85%, gold ratio >= 95%
    s_gold, t_gold = [1.0] * 30 + [0.0] * 10, [0.0] * 40
    agree = [0.0] * 30 + [1.0] * 10
    whole = slice_table([[]] * 40, agree, None, s_gold, t_gold, bar, min_n=30, n_boot=200)[0]
    assert whole["gold"]["relative"]["value"] is None and whole["gold"]["student"] == 0.75
    assert (whole["judged_on"], whole["verdict"], whole["n_judged"]) == ("gold", "pass", 40), whole["reason"]
    assert whole["reason"].startswith("gold metric is 75.0% where the teacher's is 0.0%")
    assert "agreement 25.0%, reported only" in whole["reason"]
    # Under min_slice_n it is too small, as any slice is.
    assert slice_table([[]] * 40, agree, None, s_gold, t_gold, bar, min_n=50, n_boot=200)[0]["verdict"] == "too small"
    # Both at 0 (free text's exact match to a reference, say): gold tells them apart in nothing, agreement decides.
    both = slice_table([[]] * 40, agree, None, [0.0] * 40, t_gold, bar, min_n=30, n_boot=200)[0]
    assert both["judged_on"] == "agreement" and both["verdict"] == "fail"


def test_a_student_barely_above_a_teacher_at_0_is_not_passed_without_its_gap_above_0():
    """The teacher right on 0 of 30 gold labels and the student on 2 (and agreeing with it on none): GO,
    "at or above 95% of the teacher's in every resample", as a teacher at 0 of 30 resamples to 0 every time.
    2 of 30 against 0 of 30 shows no difference: the paired gap +6.7 pt includes 0 (Fisher's p is 0.49)."""
    from potstill.evaluate import break_even, verdict
    from potstill.evaluate.html import _decided_on

    bar = QualityBar()
    s_gold, t_gold = [1.0] * 2 + [0.0] * 28, [0.0] * 30
    whole = slice_table([[]] * 30, [0.0] * 30, None, s_gold, t_gold, bar, min_n=30, n_boot=1000)[0]
    gap = whole["gold"]["gap"]
    assert gap["value"] == pytest.approx(2 / 30) and gap["lo"] < 0 < gap["hi"]
    assert (whole["judged_on"], whole["verdict"]) == ("gold", "inconclusive"), whole["reason"]
    assert whole["reason"].startswith(
        "gold metric is 6.7% where the teacher's is 0.0% (no ratio to take): the student is right on 2 examples the "
        "teacher gets wrong and the teacher on none, a result two equally good models would give 25.0% of the time "
        f"(paired gap +6.7 pt [{100 * gap['lo']:+.1f} pt, {100 * gap['hi']:+.1f} pt]): these examples do not show that "
        "the student beats the teacher")
    assert whole["reason"].endswith("; agreement 0.0%, reported only (gold decides)")
    # 0.5^k <= 2.5% from k = 5.32: at 2 in 30, from 80 examples
    assert whole["settle_n"] == 80 and "at the same rate, about 80 test examples (50 more) would settle it" in whole["reason"]
    models = {"student": {"cost_per_1k_calls_usd": 0.01, "latency_batch1": {"p95_s": 0.05}},
              "teacher": {"cost_per_1k_calls_usd": 1.0}}
    v = verdict(models, bar, [whole], break_even(1e-3, 1e-5, 1.0, 1_000_000))
    assert v["decision"] == "INCONCLUSIVE" and "do not show that the student beats the teacher" in v["reason"]
    assert "gap +6.7 pt" in _decided_on(whole)  # report.html's champion/challenger cell shows what decided


def test_a_student_right_where_a_teacher_at_0_is_wrong_passes_on_the_exact_sign_test():
    """The paired bootstrap's gap clears 0 on 4 of 30 against the teacher's 0 of 30 ([+0.2 pt, +26.7 pt]),
    a result two equally good models give 0.5^4 = 6.25% of the time: not shown at 2.5%. 6 of 30 (1.6%) is."""
    bar = QualityBar()
    rows = {k: slice_table([[]] * 30, [0.0] * 30, None, [1.0] * k + [0.0] * (30 - k), [0.0] * 30, bar, 30, 1000)[0]
            for k in (4, 5, 6, 30)}
    assert rows[4]["gold"]["gap"]["lo"] > 0 and rows[4]["verdict"] == "inconclusive"
    assert "would give 6.2% of the time" in rows[4]["reason"]
    assert rows[5]["verdict"] == "inconclusive" and rows[5]["settle_n"] == 32  # 5.32 wins at 1 in 6
    assert rows[6]["verdict"] == rows[30]["verdict"] == "pass"
    assert ": it beats the teacher; agreement 0.0%" in rows[6]["reason"]


def test_a_null_field_is_no_missing_one_and_a_field_nobody_writes_is_not_a_pass():
    """A student's {"a": 1, "b": null} against the teacher's {"a": 1}: field precision and exact match count the
    null a difference, the field:b row and the whole-answer agreement counted it the same (both read None). And a
    schema property neither model ever wrote passed at 100%, a slice that "passes on its own" under GO."""
    from potstill.evaluate import break_even, verdict
    from potstill.evaluate.html import _slices
    from potstill.evaluate.slices import field_table, output_fields
    from potstill.tasks.extraction import field_agreement

    s, t = {"a": 1, "b": None}, {"a": 1}
    assert field_prf([s], [t])["precision"] == 0.5 and exact_match([s], [t]) == 0.0
    assert field_agreement(s, t) == 0.5 and field_agreement(t, s) == 0.5  # fields a, b: a agrees, b is missing once
    n = 40
    teacher = [{"name": f"p{i}", "age": 20 + i} for i in range(n)]
    student = [dict(x) for x in teacher]
    student[5]["notes"] = None
    schema = {"properties": {"name": {}, "age": {}, "notes": {}, "comment": {}}}
    bar = QualityBar(min_agreement=0.85, min_relative_quality=None)
    rows = {r["slice"]: r for r in field_table(output_fields(schema, teacher), student, None, teacher, [None] * n,
                                                bar, 30, 1000)}
    assert rows["field:notes"]["agreement"]["value"] == 39 / 40  # was 1.0
    assert rows["field:name"]["verdict"] == "pass"
    c = rows["field:comment"]
    assert (c["verdict"], c["agreement"]["value"], c["n_judged"]) == ("n/a", None, 0)
    assert c["reason"] == ("n/a: neither the teacher nor the student wrote this field on any of the 40 test examples, "
                           "nothing to compare")
    agree = [field_agreement(x, y) for x, y in zip(student, teacher)]
    assert agree[5] == 2 / 3  # name, age and the null notes
    whole = slice_table([[]] * n, agree, None, [None] * n, [None] * n, bar, 30, 1000)[0]
    models = {"student": {"cost_per_1k_calls_usd": 0.01, "latency_batch1": {}}, "teacher": {"cost_per_1k_calls_usd": 1.0}}
    v = verdict(models, bar, [whole, *rows.values()], break_even(1e-3, 1e-5, 1.0, 1_000_000))
    assert v["decision"] == "GO" and "field:comment" not in v["pass_slices"] + v["inconclusive_slices"]
    ev = {"quality_bar": bar.model_dump(), "slices": [whole, *rows.values()], "length_edges_words": [3, 6],
          "sources": {"intervals": "exact"}}
    page = _slices(ev)
    assert "field:comment" in page and "<b>n/a</b>" in page and "field:comment (n=" not in page  # no point plotted


def test_json_values_compare_as_json_true_is_not_1_and_2_is_2_0():
    """Extraction compared field values with Python's ==, where True == 1: a student writing 1 for the
    teacher's true agreed on that field (agreement, the field rows, the verdict), while exact match and
    field precision/recall, comparing JSON text, called it wrong, and called 2.0 and 2 (one JSON number)
    different. Every one of them now compares JSON values: true is not 1, 2.0 is 2."""
    from potstill.evaluate.slices import field_table

    task = ExtractionTask(TaskConfig(type="extraction", json_schema={"type": "object"}))
    student = [task.parse('{"urgent": 1, "n": 2.0, "tags": [true]}')]
    teacher = [task.parse('{"urgent": true, "n": 2, "tags": [1]}')]
    assert task.agree(student[0], teacher[0]) == pytest.approx(1 / 3)  # n only
    assert task.agree(task.parse('{"a": 0}'), task.parse('{"a": false}')) == 0.0
    assert task.agree(task.parse('{"a": {"b": 1.0}}'), task.parse('{"a": {"b": 1}}')) == 1.0
    prf = field_prf(student, teacher)
    assert prf["precision"] == pytest.approx(1 / 3) and prf["recall"] == pytest.approx(1 / 3)
    assert exact_match([task.parse('{"n": 2.0, "m": [1.5]}')], [task.parse('{"m": [1.5], "n": 2}')]) == 1.0
    bar = QualityBar(min_agreement=0.5, min_relative_quality=None)
    rows = {r["slice"]: r for r in field_table(["urgent", "n"], student, None, teacher, [None], bar, 1, 50)}
    assert rows["field:urgent"]["agreement"]["value"] == 0.0 and rows["field:n"]["agreement"]["value"] == 1.0
