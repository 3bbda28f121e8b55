"""The verdict, case by case, on hand-made intervals (each number worked out in the comments).

The slices are judged by the real ``judge`` and the whole decision by the real ``verdict``; only the
intervals are given by hand, so every word of the reason sentence is checked against arithmetic.
"""

import pytest

from potstill.config import QualityBar
from potstill.evaluate import break_even, economics, months_text, verdict
from potstill.evaluate.slices import judge, settle_n

BAR = QualityBar()  # agreement >= 85%, gold ratio >= 95%, break-even within 12 months, no latency bar


def ci(value: float, lo: float, hi: float, n: int) -> dict:
    return {"value": value, "lo": lo, "hi": hi, "n": n}


def row(name: str, n: int, agreement: tuple, gold: tuple | None = None, bar: QualityBar = BAR) -> dict:
    """A slice row as slice_table writes it, judged by the real judge (min_slice_n 30)."""
    g = {"n": n, "relative": ci(*gold, n)} if gold else None
    return {"slice": name, "n": n, "agreement": ci(*agreement, n), **({"gold": g} if g else {}),
            **judge(ci(*agreement, n), g, bar, 30)}


# Student $0.01 and teacher $0.05 per 1,000 calls: 5.0x cheaper. Saving $0.00004 a call repays a
# one-time $4 after 4 / 0.00004 = 100,000 calls, 0.40 months at 250,000 calls a month.
CHEAP = {"student": {"cost_per_1k_calls_usd": 0.01, "latency_batch1": {"p95_s": 0.05}},
         "teacher": {"cost_per_1k_calls_usd": 0.05}}
CHEAP_BE = break_even(0.05 / 1000, 0.01 / 1000, 4.0, 250_000)
# Whole test set: gold ratio 101.0% [97.0%, 105.0%] on 250 examples, wholly at or above 95%.
WHOLE_PASS = row("all", 250, (0.88, 0.84, 0.92), (1.01, 0.97, 1.05))
GO_HEAD = ("the student is 5.0x cheaper per call, repays distilling in 0.40 months and on the whole test set its "
           "gold metric is 101.0% of the teacher's [97.0%, 105.0%], wholly at or above the 95% bar: ")


def test_pass_fail_inconclusive_on_agreement_without_gold():
    # Lower end 86% >= 85%: pass.
    r = judge(ci(0.90, 0.86, 0.94, 100), None, BAR, 30)
    assert (r["verdict"], r["judged_on"], r["settle_n"]) == ("pass", "agreement", None)
    assert r["reason"] == "agreement with the teacher is 90.0% [86.0%, 94.0%], wholly at or above the 85% bar"
    # Upper end 80% < 85%: fail.
    assert judge(ci(0.70, 0.60, 0.80, 100), None, BAR, 30)["verdict"] == "fail"
    # The point estimate 76.2% is under the bar but the interval [64.3, 88.1] reaches over it: not a fail.
    assert judge(ci(0.762, 0.643, 0.881, 42), None, BAR, 30)["verdict"] == "inconclusive"
    # 90% [80%, 98%] on 60 examples straddles 85%: h = 0.10 toward the bar, d = 0.05 from it. A hand-made
    # interval (no resamples to say more) shrinks as 1/sqrt(n): 0.10 x sqrt(60 / n') <= 0.05 from n' = 60 x 4 = 240.
    r = judge(ci(0.90, 0.80, 0.98, 60), None, BAR, 30)
    assert r["verdict"] == "inconclusive" and r["settle_n"] == 240
    assert r["reason"] == ("agreement with the teacher is 90.0% [80.0%, 98.0%], straddling the 85% bar; "
                           "at the same rate, about 240 test examples (180 more) would settle it")
    # Below the bar the half-width toward it is the upper one: 80% [70%, 90%], h = 0.10, d = 0.05; wholly below
    # (hi < 85%) from 241.
    assert settle_n(ci(0.80, 0.70, 0.90, 60), 0.85) == 241
    assert settle_n(ci(0.85, 0.80, 0.90, 60), 0.85) is None  # on the bar: no sample size is sure to settle it
    r = judge(ci(0.9, 0.8, 1.0, 12), None, BAR, 30)
    assert (r["verdict"], r["reason"]) == ("too small", "too small to judge: 12 examples < 30")


def test_gold_first_rescue():
    # Politics in the issue: the student is right more often than the teacher (83.3% vs 72.9%, ratio
    # 1.143) but agrees with it on only 70.8%, wholly below 85%. Gold decides, so it passes.
    r = judge(ci(0.708, 0.583, 0.833, 48), {"n": 48, "relative": ci(1.143, 0.99, 1.31, 48)}, BAR, 30)
    assert (r["verdict"], r["judged_on"]) == ("pass", "gold")
    assert r["reason"] == ("gold metric is 114.3% of the teacher's [99.0%, 131.0%], wholly at or above the 95% bar; "
                           "agreement 70.8%, reported only (gold decides)")
    # With the gold bar switched off the same slice is judged on agreement and fails.
    off = QualityBar(min_relative_quality=None)
    assert judge(ci(0.708, 0.583, 0.833, 48), {"n": 48, "relative": ci(1.143, 0.99, 1.31, 48)}, off, 30)["verdict"] == "fail"


def test_go_names_slices_to_switch_keep_and_settle():
    slices = [WHOLE_PASS,
              row("label:sports", 60, (0.95, 0.9, 1.0), (1.0, 0.97, 1.03)),
              row("label:politics", 48, (0.9, 0.8, 0.97), (0.80, 0.70, 0.90)),  # 90% < 95%: fail
              # 93% [88%, 98%]: h = 0.05, d = 0.02 -> 50 x 6.25 = 312.5 -> 313
              row("label:business", 50, (0.9, 0.8, 0.97), (0.93, 0.88, 0.98)),
              row("length:long", 12, (0.9, 0.8, 1.0), (1.0, 0.9, 1.1))]
    v = verdict(CHEAP, BAR, slices, CHEAP_BE)
    assert (v["go"], v["decision"]) == (True, "GO")
    assert v["reason"] == GO_HEAD + (
        "switch label:sports now; keep label:politics on the teacher; label:business (about 313 test examples) "
        "and length:long (12 of the 30 examples needed to judge) need more test data to be judged on their own")
    assert (v["pass_slices"], v["fail_slices"]) == (["label:sports"], ["label:politics"])
    assert (v["inconclusive_slices"], v["too_small_slices"]) == (["label:business"], ["length:long"])


def test_go_wordings_when_every_slice_passes_none_do_or_one_is_unsettled():
    both = [row("label:a", 100, (0.95, 0.9, 1.0)), row("label:b", 100, (0.95, 0.9, 1.0))]
    v = verdict(CHEAP, BAR, [WHOLE_PASS, *both], CHEAP_BE)
    assert v["reason"] == GO_HEAD + "switch all traffic now, every slice passes on its own"
    assert verdict(CHEAP, BAR, [WHOLE_PASS], CHEAP_BE)["reason"] == GO_HEAD + "switch all traffic now"
    one = [row("label:a", 40, (0.88, 0.80, 0.95))]  # 88% [80%, 95%]: h = 0.08, d = 0.03 -> 40 x 7.11 = 284.4 -> 285
    v = verdict(CHEAP, BAR, [WHOLE_PASS, *one], CHEAP_BE)
    assert v["reason"] == GO_HEAD + ("switch the traffic as a whole now, as no slice passes on its own yet; "
                                     "label:a (about 285 test examples) needs more test data to be judged on its own")


def test_inconclusive_overall():
    whole = row("all", 250, (0.9, 0.86, 0.94), (0.97, 0.93, 1.01))  # h = 0.04, d = 0.02 -> 250 x 4 = 1000
    v = verdict(CHEAP, BAR, [whole], CHEAP_BE)
    assert (v["go"], v["decision"]) == (False, "INCONCLUSIVE")
    assert v["reason"] == ("the student is 5.0x cheaper per call, but on the whole test set its gold metric is 97.0% "
                           "of the teacher's [93.0%, 101.0%], straddling the 95% bar; at the same rate, about 1000 test "
                           "examples (750 more) would settle it: keep every slice on the teacher until more test data settles it")


def test_cheaper_but_worse_is_no_go():
    whole = row("all", 250, (0.8, 0.75, 0.85), (0.80, 0.72, 0.88))  # 88% < 95%: wholly below
    v = verdict(CHEAP, BAR, [whole, row("label:a", 100, (0.95, 0.9, 1.0))], CHEAP_BE)
    assert (v["go"], v["decision"]) == (False, "NO-GO")
    assert v["reason"] == ("although the student is 5.0x cheaper per call, on the whole test set its gold metric is "
                           "80.0% of the teacher's [72.0%, 88.0%], wholly below the 95% bar: keep every slice on the teacher")


def test_better_but_dearer_is_no_go_whatever_its_quality():
    # The extraction run: $0.139 vs $0.054 per 1,000 calls -> 0.139 / 0.054 = 2.57 -> "2.6x".
    dear = {"student": {"cost_per_1k_calls_usd": 0.139, "latency_batch1": {"p95_s": 4.9}},
            "teacher": {"cost_per_1k_calls_usd": 0.054}}
    be = break_even(0.054 / 1000, 0.139 / 1000, 1.0, 1_000_000)
    v = verdict(dear, BAR, [WHOLE_PASS], be)
    assert (v["go"], v["decision"]) == (False, "NO-GO")
    assert v["reason"] == ("the student is 2.6x more expensive per call than the teacher ($0.139 vs $0.0540 per 1,000 "
                           "calls), so switching loses money or time whatever its quality: keep every slice on the teacher")
    # With a latency bar too, both reasons are given in one sentence.
    slow = QualityBar(max_p95_latency_s=2.0)
    assert verdict(dear, slow, [WHOLE_PASS], be)["reason"].startswith(
        "the student is 2.6x more expensive per call than the teacher ($0.139 vs $0.0540 per 1,000 calls) and the "
        "student's p95 latency of 4.90 s is over the 2 s bar, so switching")


def test_break_even_horizon_and_latency_bar():
    # Saving $0.00004 a call against a one-time $200 at 250,000 calls a month: 5,000,000 calls = 20 months > 12.
    be = break_even(0.05 / 1000, 0.01 / 1000, 200.0, 250_000)
    assert be["months"] == pytest.approx(20.0)
    v = verdict(CHEAP, BAR, [WHOLE_PASS], be)
    assert v["decision"] == "NO-GO" and v["reason"].startswith(
        "the student repays the one-time $200.00 only after 20.0 months at 250,000 calls a month, past the 12-month "
        "horizon, so switching")
    assert verdict(CHEAP, QualityBar(max_break_even_months=24), [WHOLE_PASS], be)["go"]
    # No volume configured: never repaid.
    c = economics(0.05 / 1000, 0.01 / 1000, break_even(0.05 / 1000, 0.01 / 1000, 4.0, 0), None, BAR)
    assert not c[1]["pass"] and c[1]["why"].startswith("no monthly volume is configured (evaluate.monthly_calls = 0)")
    fast = QualityBar(max_p95_latency_s=0.05)  # p95 0.05 s is at the bar: passes
    v = verdict(CHEAP, fast, [WHOLE_PASS], CHEAP_BE)
    assert v["go"] and v["reason"].startswith("the student is 5.0x cheaper per call, repays distilling in 0.40 months, "
                                              "answers within the 0.05 s latency bar and on the whole test set")
    assert not verdict(CHEAP, QualityBar(max_p95_latency_s=0.04), [WHOLE_PASS], CHEAP_BE)["go"]
    # A teacher recorded at $0 a call cannot be undercut.
    free = {"student": CHEAP["student"], "teacher": {"cost_per_1k_calls_usd": 0.0}}
    assert verdict(free, BAR, [WHOLE_PASS], break_even(0.0, 0.01 / 1000, 4.0, 1000))["reason"].startswith(
        "the teacher cost nothing per call as recorded")


def test_whole_set_must_come_first():
    with pytest.raises(ValueError, match="'all'"):
        verdict(CHEAP, BAR, [row("label:a", 100, (0.95, 0.9, 1.0))], CHEAP_BE)


def test_the_cost_checks_use_the_cost_basis_of_the_break_even():
    """evaluate.cost_basis batched: the break-even prices the student at its batched cost, $0.01 per
    1,000 calls, and so must the verdict's cost checks; at batch 1 ($0.08) it is dearer than the
    teacher ($0.05), and the verdict said NO-GO ("1.6x more expensive") beside a report whose
    break-even repaid distilling in 0.40 months. The headline break-even's basis decides both."""
    from potstill.config import load_config
    from potstill.evaluate.stage import _break_even

    models = {"student": {"cost_per_1k_calls_usd": 0.08, "cost_per_1k_calls_batched_usd": 0.01,
                          "latency_batch1": {"p95_s": 0.05}},
              "teacher": {"cost_per_1k_calls_usd": 0.05}}
    task = {"type": "freetext", "instruction": "answer"}
    batched = load_config(overrides={"task": task, "evaluate": {"cost_basis": "batched", "monthly_calls": 250_000}})
    be = _break_even(batched, models, {"total_usd": 4.0})
    v = verdict(models, BAR, [WHOLE_PASS], be)
    assert (v["decision"], be["months"]) == ("GO", pytest.approx(0.40))
    assert v["reason"].startswith(GO_HEAD)
    batch1 = load_config(overrides={"task": task, "evaluate": {"cost_basis": "batch1", "monthly_calls": 250_000}})
    v = verdict(models, BAR, [WHOLE_PASS], _break_even(batch1, models, {"total_usd": 4.0}))
    assert v["decision"] == "NO-GO" and "1.6x more expensive per call" in v["reason"]


def test_nothing_to_repay_breaks_even_at_once_whatever_the_volume():
    """A run whose distilling cost nothing (a local teacher priced at $0, student.usd_per_hour 0) and
    evaluate.monthly_calls 0: break_even gave months None (0 calls / 0 a month), and the verdict was
    NO-GO because 'the one-time $0.00 is never repaid'. Nothing to repay is repaid at once."""
    be = break_even(0.05 / 1000, 0.01 / 1000, 0.0, 0)
    assert (be["calls"], be["months"]) == (0.0, 0.0)
    v = verdict(CHEAP, BAR, [WHOLE_PASS], be)
    assert (v["go"], v["decision"]) == (True, "GO"), v["reason"]
    assert v["reason"].startswith("the student is 5.0x cheaper per call, repays distilling at once (no one-time cost) "
                                  "and on the whole test set")
    from potstill.evaluate import break_even_curve
    from potstill.evaluate.html import _break_even

    be["curve"] = break_even_curve(0.05 / 1000, 0.01 / 1000, 0.0, 0, be["months"])
    page = _break_even({"break_even": be, "sources": {"monthly_calls": "config evaluate.monthly_calls=0"}})
    assert "distilling cost nothing, so it breaks even at once" in page
    # With a one-time cost and no volume it is never repaid, and the reason says which setting to change.
    c = economics(0.05 / 1000, 0.01 / 1000, break_even(0.05 / 1000, 0.01 / 1000, 4.0, 0), None, BAR)
    assert not c[1]["pass"] and "evaluate.monthly_calls" in c[1]["why"] and "max_break_even_months" in c[1]["why"]


def test_a_break_even_under_a_hundredth_of_a_month_is_said_in_hours_or_minutes():
    """The quickstart's one-time cost repaid at a million calls a month read "repays distilling in 0.00
    months", as if it had not been counted. Under 0.005 months it is said in hours or minutes."""

    assert months_text(0.40) == "0.40 months" and months_text(0.005) == "0.01 months"
    assert months_text(0.0049) == "3.6 hours"  # 0.0049 x 30.44 days x 24
    assert months_text(0.001) == "44 minutes" and months_text(1e-6) == "under a minute"
    # $0.04 repaid at $0.00004 saved a call: 1,000 calls, 0.001 months at a million calls a month
    be = break_even(0.05 / 1000, 0.01 / 1000, 0.04, 1_000_000)
    (_, months) = economics(0.05 / 1000, 0.01 / 1000, be, 0.05, BAR)
    assert months["pass"] and months["value"] == "44 minutes"


def test_the_latency_reason_shows_p95_to_the_bars_precision():
    """The reason rounded p95 to 2 decimals: "the student's p95 latency of 0.00 s is over the 0.003 s
    bar", beside a value of "0.004 s". Both show 3 significant digits, more where those read as the bar."""
    bar = QualityBar(max_p95_latency_s=0.003)
    be = break_even(0.001, 0.0001, 0.0, 1000)
    (lat,) = [c for c in economics(0.001, 0.0001, be, 0.0042, bar) if "latency" in c["check"]]
    assert lat["why"] == "the student's p95 latency of 0.00420 s is over the 0.003 s bar" and lat["value"] == "0.00420 s"
    (lat,) = [c for c in economics(0.001, 0.0001, be, 0.0030004, bar) if "latency" in c["check"]]
    assert "0.0030004 s is over the 0.003 s bar" in lat["why"]


def test_200_labels_are_named_up_to_12_in_the_verdict_and_20_in_the_confusion_matrix():
    """200 labels listed every one in the verdict's sentence and box (2,706 px of names) and made a 200 x 200
    confusion matrix (23,826 px): a 55,000-px page. Each list names the 12 largest slices and counts the rest;
    the matrix shows the 20 most frequent labels and sums the others in one row and column."""
    from potstill.evaluate.html import _confusion, _verdict
    from potstill.evaluate.metrics import confusion_matrix

    labels = [f"l{i:03d}" for i in range(200)]
    slices = [WHOLE_PASS] + [row(f"label:{lab}", 100 + i, (0.95, 0.9, 1.0)) for i, lab in enumerate(labels)]
    v = verdict(CHEAP, BAR, slices, CHEAP_BE)
    assert v["reason"] == GO_HEAD + "switch all traffic now, every slice passes on its own"
    slices[1:101] = [row(f"label:{lab}", 100 + i, (0.7, 0.6, 0.8)) for i, lab in enumerate(labels[:100])]  # fail
    v = verdict(CHEAP, BAR, slices, CHEAP_BE)
    # passing: l100 to l199 (n 200 to 299), the 12 largest l188 to l199; failing: l000 to l099, the largest l088 to l099
    named = lambda labs: ", ".join(f"label:{lab}" for lab in labs)  # noqa: E731
    assert v["reason"] == GO_HEAD + (
        f"switch {named(labels[188:200])} and 88 other slices (the per-slice table lists every one) now; "
        f"keep {named(labels[88:100])} and 88 other slices (the per-slice table lists every one) on the teacher")
    assert len(v["pass_slices"]) == 100  # eval.json keeps them all
    small = [row(f"label:s{i}", 10 + i, (0.9, 0.8, 1.0)) for i in range(15)]  # 10 to 24 examples: too small
    assert verdict(CHEAP, BAR, [WHOLE_PASS, *small], CHEAP_BE)["reason"] == GO_HEAD + (
        "switch the traffic as a whole now, as no slice passes on its own yet; label:s3 (13 of the 30 examples needed "
        "to judge), " + ", ".join(f"label:s{i} ({10 + i} of the 30 examples needed to judge)" for i in range(4, 14))
        + ", label:s14 (24 of the 30 examples needed to judge) and 3 other slices (the per-slice table lists every "
        "one) need more test data to be judged on their own")
    ev = {"verdict": v, "slices": slices, "min_slice_n": 30, "quality_bar": BAR.model_dump(),
          "sources": {"quality_bar": "config"}}
    box = _verdict(ev)
    assert "label:l199" in box and "label:l100," not in box
    assert "and 88 more (the 12 largest named; the per-slice table lists every one)" in box
    # The confusion matrix: label i is the teacher's answer 1 + i // 10 times (l199 the most), the student
    # right on each but one of l000's, which it answers l001.
    refs = [lab for i, lab in enumerate(labels) for _ in range(1 + i // 10)]
    preds = ["l001" if (r == "l000" and k == 0) else r for k, r in enumerate(refs)]
    cm = confusion_matrix(preds, refs, labels)
    page = _confusion({"task": "classification", "metrics": {"student": {"vs_teacher": {"confusion": cm, "n": len(refs)}}}})
    assert page.count("<tr>") == 1 + 21  # the header, 20 labels and (others)
    assert "The 20 most frequent of the 200 labels" in page and "the other 180 are summed in (others)" in page
    head = page[page.index("<tr>"):page.index("</tr>")]
    assert head.count("<th>") == 21 and ">l199<" in head and ">l180<" in head and ">l179<" not in head
    # (others) x (others): every answer of the 180 other labels, l000's wrong one among them (l001 is another)
    others = page[page.rindex("<tr><th class='l'><bdi>(others)</bdi></th>"):]
    assert f">{sum(1 + i // 10 for i in range(180))}</td>" in others


def test_a_p95_of_too_few_calls_decides_no_latency_bar_and_says_how_many(capsys):
    """max_p95_latency_s gated GO on a p95 of 1 to 3 timed calls (of 2: x0 + 0.95 (x1 - x0), nearly the slower
    one), and nothing on the page said from how many: the latency table's p95 had no n. Under 20 calls the
    latency check is inconclusive, and so is the verdict, in words; every p95 shows its count."""
    from potstill.evaluate.html import _cost
    from potstill.report import print_table

    fast = QualityBar(max_p95_latency_s=0.1)
    few = {**CHEAP, "student": {**CHEAP["student"], "latency_batch1": {"p95_s": 0.05, "n": 2}}}
    v = verdict(few, fast, [WHOLE_PASS], CHEAP_BE)
    assert (v["go"], v["decision"]) == (False, "INCONCLUSIVE")
    why = ("the student's p95 latency (0.0500 s) comes from 2 timed calls, fewer than the 20 a 95th percentile needs "
           "to pass the 0.1 s bar (raise evaluate.latency_samples, with as many test inputs)")
    assert v["reason"] == GO_HEAD.removesuffix(": ") + f", but {why}: keep every slice on the teacher until more timed calls settle it"
    (lat,) = [c for c in v["checks"] if "latency" in c["check"]]
    assert (lat["result"], lat["pass"], lat["value"]) == ("inconclusive", False, "0.0500 s (n=2)")
    slow = {**CHEAP, "student": {**CHEAP["student"], "latency_batch1": {"p95_s": 0.5, "n": 2}}}
    assert verdict(slow, fast, [WHOLE_PASS], CHEAP_BE)["decision"] == "INCONCLUSIVE"  # over the bar on 2 calls: no NO-GO
    enough = {**CHEAP, "student": {**CHEAP["student"], "latency_batch1": {"p95_s": 0.05, "n": 20}}}
    assert verdict(enough, fast, [WHOLE_PASS], CHEAP_BE)["decision"] == "GO"
    slow = {**CHEAP, "student": {**CHEAP["student"], "latency_batch1": {"p95_s": 0.5, "n": 20}}}
    assert verdict(slow, fast, [WHOLE_PASS], CHEAP_BE)["decision"] == "NO-GO"
    # The latency table and the terminal's give each p95 its count.
    rows = [{"model": "student", "p50_s": 0.04, "p95_s": 0.05, "latency_n": 2, "batched_p50_s": 0.2,
             "batched_p95_s": 0.3, "batched_n": 25, "batch_size": 4, "usd_per_call": 1e-5, "usd_per_1k_calls": 0.01,
             "source": "timed"}]
    page = _cost({"latency_cost": rows, "one_time": {"generation_usd": 1.0, "train_usd": 0.5, "train_s": 1800,
                                                     "total_usd": 1.5},
                  "sources": {"generation_usd": "ledger", "train_usd": "train.json"}})
    assert "0.050 s <span class='small'>(2 calls, too few for a p95 (the verdict's latency check needs 20 to pass))</span>" in page
    assert "0.300 s <span class='small'>(25 batches)</span>" in page
    print_table("t", {"student": {"latency_batch1": {"p50_s": 0.04, "p95_s": 0.05, "n": 2}}})
    assert "0.050 s (n=2)" in capsys.readouterr().out


def test_too_few_timed_calls_still_fail_the_latency_bar_when_too_many_are_over_it():
    """Under 20 timed calls the latency check was inconclusive whichever side of the bar: a student whose 10
    calls all took 8 s against a 1 s bar was INCONCLUSIVE. A p95 within the bar leaves at most 5% of calls
    over it, so k of n over it happens at most P(Binomial(n, 0.05) >= k) of the time; at 2.5% or less it fails."""
    from math import comb

    from potstill.evaluate.exact import binomial_tail
    from potstill.students import latency_stats

    def tail(k: int, n: int) -> float:  # the sum term by term
        return sum(comb(n, i) * 0.05 ** i * 0.95 ** (n - i) for i in range(k, n + 1))

    for k, n in [(1, 3), (2, 10), (3, 10), (5, 10), (10, 10), (0, 19), (19, 19)]:
        assert binomial_tail(k, n, 0.05) == pytest.approx(tail(k, n), rel=1e-9)
    slow_bar = QualityBar(max_p95_latency_s=1.0)

    def decide(times: list[float]) -> tuple[str, dict]:
        m = {**CHEAP, "student": {**CHEAP["student"], "latency_batch1": latency_stats(times)}}
        v = verdict(m, slow_bar, [WHOLE_PASS], CHEAP_BE)
        return v["decision"], next(c for c in v["checks"] if "latency" in c["check"])

    decision, lat = decide([8.0] * 10)  # 10 of 10 over: 0.05^10
    assert (decision, lat["result"], lat["pass"]) == ("NO-GO", "fail", False)
    assert lat["why"] == ("the student's p95 latency of 8.00 s is over the 1 s bar: 10 of its 10 timed calls took "
                          "longer than 1 s, which a p95 within the bar gives less than 1 in a million of the time")
    # 3 of 10 over: 1.15%, a fail; 2 of 10: 8.6%, could still be chance.
    decision, lat = decide([0.5] * 7 + [3.0] * 3)
    assert (decision, lat["result"]) == ("NO-GO", "fail")
    assert "3 of its 10 timed calls took longer than 1 s, which a p95 within the bar gives 1.2% of the time" in lat["why"]
    decision, lat = decide([0.5] * 8 + [3.0] * 2)
    assert (decision, lat["result"]) == ("INCONCLUSIVE", "inconclusive")
    assert lat["why"] == ("the student's p95 latency (3.00 s) comes from 10 timed calls, fewer than the 20 a 95th "
                          "percentile needs to pass the 1 s bar; it is over the bar, but only 2 of its 10 timed calls "
                          "took longer than 1 s, which a p95 within the bar gives 8.6% of the time, too often to fail "
                          "it (raise evaluate.latency_samples, with as many test inputs)")
    assert decide([0.5] * 10)[0] == "INCONCLUSIVE"  # all under the bar, still too few to pass
    assert decide([0.5] * 20)[0] == "GO"
    # Only the percentiles kept (the median of 10 calls 8 s): at least the 5 calls from the median's upper
    # neighbour on are over the bar.
    kept = {**CHEAP, "student": {**CHEAP["student"], "latency_batch1": {"p50_s": 8.0, "p95_s": 9.5, "n": 10}}}
    v = verdict(kept, slow_bar, [WHOLE_PASS], CHEAP_BE)
    assert v["decision"] == "NO-GO"
    assert "at least 5 of its 10 timed calls took longer than 1 s, which a p95 within the bar gives 1 in 16,000" in v["reason"]
