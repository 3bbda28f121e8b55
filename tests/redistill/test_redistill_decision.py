"""The promotion rule (``redistill.compare.decide``) on real bootstrap comparisons."""

from __future__ import annotations

from potstill.config import RedistillConfig
from potstill.redistill.compare import compare, decide


def _decide(champion: list[float], challenger: list[float], rc: RedistillConfig) -> dict:
    frozen = [1.0] * 40  # both students agree with the teacher on the whole frozen test: no drop
    new = compare({"teacher": champion}, {"teacher": challenger}, 200, 0)
    return decide(new, compare({"teacher": frozen}, {"teacher": frozen}, 200, 0), rc)


def test_two_new_traffic_examples_do_not_decide_a_promotion():
    """With the defaults (min_gain 0, no significance required) a challenger that got 2 of 2
    new-traffic examples right where the champion got none was promoted on that alone."""
    rc = RedistillConfig()
    d = _decide([0.0, 0.0], [1.0, 1.0], rc)
    assert d["promote"] is False and d["challenger_wins"] is False
    assert d["reason"].startswith(f"new-traffic test too small (n=2 < redistill.min_new_test {rc.min_new_test})")
    assert {"check": f"new-traffic test of at least {rc.min_new_test} examples", "value": 2, "pass": False} in d["checks"]
    # The same gain on a test of the minimum size is promoted, and a smaller minimum lets 2 decide.
    n = rc.min_new_test
    big = _decide([0.0] * n, [1.0] * n, rc)
    assert big["promote"] is True and "too small" not in big["reason"]
    assert _decide([0.0, 0.0], [1.0, 1.0], RedistillConfig(min_new_test=2))["promote"] is True
    # Too small and not better: both reasons are given.
    both = _decide([1.0, 1.0], [1.0, 1.0], rc)
    assert both["reason"].startswith("new-traffic test too small") and "fails: new-traffic agreement gain > 0" in both["reason"]
