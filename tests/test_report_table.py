"""The comparison table pilot and evaluate print, and the pilot's summary line, read as written."""

from __future__ import annotations

import math

from potstill.report import print_table


def test_a_latency_of_no_rows_prints_as_a_dash_not_nan(capsys):
    """A teacher with no ledger rows for the test inputs has a NaN p50 (a percentile of nothing): the
    table printed 'nan s' where eval.json says null."""
    print_table("t", {"teacher": {"gold_metric": 0.8, "agreement_with_teacher": 1.0,
                                  "latency_batch1": {"p50_s": math.nan, "p95_s": math.nan}},
                      "student": {"gold_metric": 0.7, "agreement_with_teacher": 0.9,
                                  "latency_batch1": {"p50_s": 0.0125, "p95_s": 0.02}}})
    text = capsys.readouterr().out
    assert "nan" not in text and "0.013 s" in text and "- s" not in text


def test_the_pilot_line_says_leads_where_the_student_beats_the_teacher_on_gold():
    """It said 'trails it by -5.0 points on gold' where the untrained student was ahead."""
    from potstill.pilot.stage import summary_line

    ahead = summary_line({"agreement_with_teacher": 0.5, "gold_metric": 0.75}, {"gold_metric": 0.70})
    behind = summary_line({"agreement_with_teacher": 0.5, "gold_metric": 0.60}, {"gold_metric": 0.70})
    assert ahead.endswith("and leads it by 5.0 points on gold") and behind.endswith("and trails it by 10.0 points on gold")
    assert "gold" not in summary_line({"agreement_with_teacher": 0.5}, {"gold_metric": None})
