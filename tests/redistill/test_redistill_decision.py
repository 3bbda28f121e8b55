"""The promotion rule (``redistill.compare.decide``) on real bootstrap comparisons."""

from __future__ import annotations

from potstill.config import RedistillConfig
from potstill.redistill.compare import compare, decide


def _decide(champion: list[float], challenger: list[float], rc: RedistillConfig) -> dict:
    frozen = [1.0] * 40  # both students agree with the teacher on the whole frozen test: no drop
    new = compare({"teacher": champion}, {"teacher": challenger}, 200, 0)
    return decide(new, compare({"teacher": frozen}, {"teacher": frozen}, 200, 0), rc)


def test_two_new_traffic_examples_do_not_decide_a_promotion():
    """With min_gain 0 and no significance required (the defaults then) a challenger that got 2 of 2
    new-traffic examples right where the champion got none was promoted on that alone."""
    rc = RedistillConfig()
    d = _decide([0.0, 0.0], [1.0, 1.0], rc)
    assert d["promote"] is False and d["challenger_wins"] is False
    assert d["reason"].startswith(f"new-traffic test too small (n=2 < redistill.min_new_test {rc.min_new_test})")
    assert {"check": f"new-traffic test of at least {rc.min_new_test} examples", "value": 2, "pass": False} in d["checks"]
    # The same gain on a test of the minimum size is promoted, and a smaller minimum lets 2 decide
    # where significance is not required (2 of 2 is no significant gain: [-0.68, +1]).
    n = rc.min_new_test
    big = _decide([0.0] * n, [1.0] * n, rc)
    assert big["promote"] is True and "too small" not in big["reason"]
    assert _decide([0.0, 0.0], [1.0, 1.0], RedistillConfig(min_new_test=2, require_significant=False))["promote"] is True
    assert _decide([0.0, 0.0], [1.0, 1.0], RedistillConfig(min_new_test=2))["promote"] is False
    # Too small and not better: both reasons are given.
    both = _decide([1.0, 1.0], [1.0, 1.0], rc)
    assert both["reason"].startswith("new-traffic test too small") and "fails: new-traffic agreement gain > 0" in both["reason"]


def test_free_text_students_are_compared_on_chrf_not_exact_match():
    """Exact match with the teacher's summary is 0 for nearly every answer of either student, so the
    gain was noise around 0 and a challenger that writes much closer summaries was never promoted.
    Free text scores chrF against the teacher's answer; other tasks keep agreement."""
    from potstill.config import TaskConfig
    from potstill.records import Record
    from potstill.redistill.compare import measure, scores
    from potstill.tasks import get_task

    text = get_task(TaskConfig(type="freetext", instruction="Summarise."))
    teacher = [f"The customer was charged twice for invoice {i} and asks for a refund." for i in range(30)]
    records = [Record(messages=[{"role": "user", "content": f"ticket {i}"}], output=t) for i, t in enumerate(teacher)]
    champion = [f"Refund refund refund {i}." for i in range(30)]
    challenger = [f"The customer was charged twice for invoice {i} and wants a refund." for i in range(30)]
    champ, chall = scores(text, champion, records), scores(text, challenger, records)
    assert measure(text) == "chrF" and max(champ["teacher"]) < 0.5 < min(chall["teacher"]) < 1.0
    frozen = compare(chall, chall, 200, 0, "chrF")  # the same answers on the frozen test: no drop
    d = decide(compare(champ, chall, 200, 0, "chrF"), frozen, RedistillConfig())
    assert d["promote"] is True and "changes frozen-test chrF by +0.000" in d["reason"], d["reason"]
    # Exact match, the measure before, saw no difference: 0 of 30 for both.
    assert [text.agree(c, t) for c, t in zip(challenger, teacher)] == [0.0] * 30
    labels = get_task(TaskConfig(type="classification", labels=["a", "b"], instruction="?"))
    assert measure(labels) == "agreement"
