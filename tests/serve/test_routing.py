"""Routing rules and calibration as pure functions."""

import math

import pytest
import torch

from potstill.errors import PotstillError
from potstill.serve.routing import Routing, calibrate, ood_distance, outcome

CONF = [0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
# The student disagrees with the teacher on its three least confident inputs.
AGREE = [0, 0, 0, 1, 1, 1, 1, 1, 1, 1]
NEAR = [0.0] * 10
VALID = [False] * 10


def test_decide_order_and_reasons():
    r = Routing(confidence_threshold=0.5, ood_threshold=0.3)
    assert r.decide(0.9, 0.1, None) == ("student", "confident")
    assert r.decide(0.4, 0.1, None) == ("teacher", "low_confidence")
    assert r.decide(0.9, 0.31, None) == ("teacher", "out_of_distribution")
    assert r.decide(0.9, 0.31, "answer outside the label set") == ("teacher", "invalid_output")
    # A generated answer cut at the task's budget: after validation, before distance and confidence.
    assert r.decide(0.9, 0.1, None, truncated=True) == ("teacher", "truncated")
    assert r.decide(0.9, 0.31, None, truncated=True) == ("teacher", "truncated")
    assert r.decide(0.9, 0.1, "not JSON", truncated=True) == ("teacher", "invalid_output")


def test_target_escalation_is_met_and_as_large_as_allowed():
    r = calibrate(CONF, AGREE, NEAR, VALID, target_escalation=0.3, ood_quantile=1.0)
    assert r.stats["val_escalation"] == pytest.approx(0.3)
    assert r.stats["val_agreement"] == pytest.approx(1.0)
    assert r.stats["val_student_alone_agreement"] == pytest.approx(0.7)
    assert r.decide(0.2, 0.0, None)[0] == "teacher" and r.decide(0.3, 0.0, None)[0] == "student"
    assert calibrate(CONF, AGREE, NEAR, VALID, target_escalation=0.0, ood_quantile=1.0).stats["val_escalation"] == 0


def test_target_agreement_picks_fewest_escalations():
    r = calibrate(CONF, AGREE, NEAR, VALID, target_agreement=0.9, ood_quantile=1.0)
    # Escalating the two least confident inputs lifts agreement from 0.7 to 0.9.
    assert r.stats["val_escalation"] == pytest.approx(0.2)
    assert r.stats["val_agreement"] == pytest.approx(0.9)


def test_ood_and_invalid_escalations_count_towards_the_target():
    dist = [0.0] * 9 + [1.0]
    r = calibrate(CONF, AGREE, dist, VALID, target_escalation=0.3, ood_quantile=0.85)
    assert r.stats["val_forced_escalations"] == 1
    assert r.stats["val_escalation"] <= 0.3 + 1e-9
    assert r.decide(0.95, 1.0, None) == ("teacher", "out_of_distribution")


def test_sweep_is_monotone():
    r = calibrate(CONF, AGREE, NEAR, VALID, ood_quantile=1.0)
    esc = [p["escalation"] for p in r.stats["sweep"]]
    assert esc[0] == 0 and esc[-1] == 1 and esc == sorted(esc)
    assert outcome(math.inf, CONF, AGREE, VALID)["agreement"] == 1.0


def test_ood_distance_is_cosine_to_nearest():
    ref = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), dim=-1)
    x = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [1.0, 1.0], [-1.0, 0.0]]), dim=-1)
    d = ood_distance(x, ref)
    assert d[0] == pytest.approx(0.0, abs=1e-6)
    assert d[1] == pytest.approx(1 - math.sqrt(0.5), abs=1e-6)
    assert d[2] == pytest.approx(1.0, abs=1e-6)


def test_calibration_needs_data():
    with pytest.raises(PotstillError):
        calibrate([], [], [], [])


def test_the_ood_threshold_pools_val_with_held_out_distances():
    held = [0.1 * i for i in range(1, 31)]  # in-distribution inputs farther out than the ten val ones
    r = calibrate(CONF, AGREE, NEAR, VALID, target_escalation=0.3, ood_quantile=0.9, ood_sample=held)
    pooled = sorted(NEAR + held)
    k = (len(pooled) - 1) * 0.9
    assert r.ood_threshold == pytest.approx(pooled[int(k)] + (pooled[int(k) + 1] - pooled[int(k)]) * (k - int(k)))
    assert r.stats["n_ood_sample"] == 40 and r.stats["val_forced_escalations"] == 0
    # Val alone put its threshold at float noise.
    assert calibrate(CONF, AGREE, NEAR, VALID, ood_quantile=0.9).ood_threshold == pytest.approx(1e-3)
