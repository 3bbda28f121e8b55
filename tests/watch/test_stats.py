"""Properties of the drift statistics and of the traffic reader's small parsers."""

from __future__ import annotations

import math

import pytest
import torch

from potstill.errors import PotstillError
from potstill.watch.stats import chi2_sf, escalation_trend, label_test, mmd_test
from potstill.ledger import user_messages
from potstill.watch.traffic import parse_time


def gauss(n: int, shift: float = 0.0, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    x[:, 0] += shift
    return x


def test_mmd_same_distribution_is_calm_and_a_shift_is_not():
    calm = [mmd_test(gauss(80, seed=s), gauss(120, seed=100 + s), 300, seed=s) for s in range(5)]
    assert all(r["p_value"] > 0.01 for r in calm)
    shifted = mmd_test(gauss(80, 1.0, seed=1), gauss(120, seed=2), 300)
    assert shifted["p_value"] == pytest.approx(1 / 301) and shifted["effect"] > 2 * max(r["effect"] for r in calm)


def test_mmd_is_symmetric_and_its_effect_does_not_grow_with_n():
    x, y = gauss(60, 0.7, seed=3), gauss(90, seed=4)
    assert mmd_test(x, y, 99)["mmd2"] == pytest.approx(mmd_test(y, x, 99)["mmd2"])
    small = mmd_test(gauss(60, 0.7, seed=5), gauss(60, seed=6), 99)["effect"]
    big = mmd_test(gauss(600, 0.7, seed=5), gauss(600, seed=6), 99)["effect"]
    assert big == pytest.approx(small, rel=0.35)
    # Identical rows: no bandwidth to estimate, the kernel is flat, nothing to detect.
    same = mmd_test(torch.ones(5, 3), torch.ones(7, 3), 99)
    assert same["effect"] == 0 and same["p_value"] == 1.0
    with pytest.raises(ValueError, match="at least 2 rows"):
        mmd_test(torch.ones(1, 3), torch.ones(7, 3))


def test_chi2_sf_matches_known_values():
    # Tables: chi-square(1) at 3.841 and chi-square(4) at 9.488 are the 5% points.
    assert chi2_sf(3.841459, 1) == pytest.approx(0.05, abs=1e-6)
    assert chi2_sf(9.487729, 4) == pytest.approx(0.05, abs=1e-6)
    assert chi2_sf(0.0, 3) == 1.0


def test_label_test_zero_for_identical_mixes_and_large_for_another_mix():
    same = label_test(["a", "b"] * 50, ["a", "b"] * 80)
    assert same["tv"] == 0 and same["g"] == pytest.approx(0, abs=1e-9) and same["p_value"] == pytest.approx(1.0)
    other = label_test(["a"] * 90 + ["c"] * 10, ["a", "b"] * 80)
    assert other["tv"] == pytest.approx(0.5) and other["p_value"] < 1e-6 and other["df"] == 2
    assert other["live"]["c"] == pytest.approx(0.1) and other["reference"]["c"] == 0
    assert label_test(["a"] * 5, ["a"] * 9)["p_value"] == 1.0


def test_escalation_trend_shares_and_slope():
    flat = escalation_trend([True, False] * 50, bins=5)
    assert flat["share"] == 0.5 and flat["per_window"] == [0.5] * 5 and flat["slope_per_100"] == pytest.approx(0)
    # 0% escalated in the first half, 100% in the second: shares 0, 0, 0.5, 1, 1 over windows of 20.
    rising = escalation_trend([False] * 50 + [True] * 50, bins=5)
    assert rising["per_window"] == [0, 0, 0.5, 1, 1] and rising["slope_per_100"] == pytest.approx(1.5)
    assert escalation_trend([True], bins=5)["per_window"] == [1.0]


def test_parse_time_and_user_messages():
    assert parse_time("1732406400") == 1732406400
    assert parse_time("2024-11-24T00:00:00") == 1732406400  # naive means UTC
    assert parse_time("2h", now=10_000) == 10_000 - 7200 and parse_time("7d", now=1e6) == 1e6 - 7 * 86400
    with pytest.raises(PotstillError, match="cannot read time 'yesterday'"):
        parse_time("yesterday")
    req = {"messages": [{"role": "system", "content": "ignored"},
                        {"role": "user", "content": [{"type": "text", "text": "a "}, {"type": "text", "text": "b"}]}]}
    assert user_messages(req) == [{"role": "user", "content": "a b"}]
    assert math.isfinite(parse_time("2026-11-24T01:00+01:00"))


def test_the_fewest_permutations_can_still_flag_drift_and_an_unreachable_alpha_is_refused():
    """A permutation p-value is (1 + k) / (1 + permutations), never under 1/300 at the 299 permutations
    watch allows at alpha 0.01 (Holm over three checks triples it); flagged at p < alpha, a 5-sigma
    shift at the floor was never drift (exit 0). The test rejects at p <= alpha (its level is alpha),
    and an alpha no p-value can reach is one line."""
    from potstill.config import WatchConfig, load_config
    from potstill.watch.stage import judge

    torch.manual_seed(0)
    live, ref = torch.randn(200, 16) + 5.0, torch.randn(256, 16)
    for perms in (299, 1000):
        rep = judge(live, ref, None, None, [False] * 200, None, WatchConfig(permutations=perms))
        assert rep["checks"]["input"]["flagged"] and rep["drift"], (perms, rep["checks"]["input"])
    calm = judge(torch.randn(200, 16), ref, None, None, [False] * 200, None, WatchConfig(permutations=299))
    assert not calm["checks"]["input"]["flagged"]
    with pytest.raises(PotstillError, match=r"watch.alpha 0.0005 is below the smallest p-value 1000 permutations can "
                                            r"give over a run's 3 checks \(Holm: 3/1001 = 0.003\).*at least 5999"):
        load_config(None, {"task.labels": ["a", "b"], "watch.alpha": 0.0005})
    assert load_config(None, {"task.labels": ["a", "b"], "watch.alpha": 0.0005, "watch.permutations": 5999})
    # Holm's adjustment over three checks triples the smallest p: 99 permutations (1/100) cannot reach 0.01.
    with pytest.raises(PotstillError, match=r"at least 299"):
        load_config(None, {"task.labels": ["a", "b"], "watch.permutations": 99})
