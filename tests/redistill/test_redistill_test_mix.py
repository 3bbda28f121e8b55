"""The new-traffic test holds the traffic as served: redistill's own steps 1-2 (``_traffic_step``,
``_curation_step``) on a real served run (tiny student, replayed teacher through the ledger)."""

from __future__ import annotations

from collections import Counter

from potstill.redistill import _curation_step, _traffic_step
from potstill.tasks import get_task
from tests.redistill.test_redistill import _cfg, _copy_original


def _steps(run, student_sample: float):
    cfg = _cfg(run, **{"redistill.student_sample": student_sample, "redistill.promote": False})
    traffic, sampled, _ = _traffic_step(run / "calls.sqlite", cfg, get_task(cfg.task), {})
    nd = _curation_step(run, cfg, traffic, sampled, {})
    return traffic, sampled, Counter(r.slice[0] for r in nd.cur.test)


def test_a_student_sample_under_new_test_keeps_the_traffic_mix_in_the_new_traffic_test(served_run, tmp_path, capsys):
    """With --student-sample (0.1) under --new-test (0.3) only the student-answered inputs of the lowest
    ranks were labelled, while every escalated input under the cut was in the test: 88% escalated where
    the traffic was 67%, so the gain was weighted to the slice where the champion is weakest and a
    challenger worse on the served mix was promoted the more often the more traffic there was. Every
    student-answered input that falls in the test is now labelled, whatever the sample: the same test
    as at 0.5, said in one line with the numbers."""
    run = tmp_path / "run"
    _copy_original(served_run, run)
    traffic, small, mix = _steps(run, 0.1)
    assert "fewer than the" in capsys.readouterr().err
    _, large, as_served = _steps(run, 0.5)
    assert mix == as_served and len(small) < len(large)
    served = len(traffic.escalated) / (len(traffic.escalated) + len(traffic.student))
    tested = mix["served:escalated"] / sum(mix.values())
    assert abs(tested - served) <= 0.08, (mix, served)  # before: 88% vs 67%
