"""How often `potstill watch` pages when nothing drifted: watch's own decision functions
(``expected_escalation`` on a routing.json as serve writes it, ``judge``) over many seeded windows
drawn from the traffic the student was calibrated for, counting alarms."""

from __future__ import annotations

import json
import random

import torch

from potstill.config import WatchConfig
from potstill.watch.stage import expected_escalation, judge

NO_INPUTS = torch.zeros(0, 8)  # the input check is not the one under test here: it says "not judged"
REF = torch.zeros(4, 8)


def _routing(run, val_escalation: float, n_val: int, n_val_too_long: int = 0) -> None:
    """RUN/serve/routing.json with the stats serve's calibration writes (``calibrate_run``)."""
    (run / "serve").mkdir(parents=True, exist_ok=True)
    (run / "serve" / "routing.json").write_text(json.dumps({"stats": {
        "val_escalation": val_escalation, "n_val": n_val, "n_val_too_long": n_val_too_long}}))


def _alarms(run, seeds: int, window: int, too_long: float, escalate: float, w: WatchConfig) -> float:
    """Share of windows flagged: each request is past the student's context with chance ``too_long``
    (escalated, reason too_long), else escalated by the student's routing with chance ``escalate``."""
    expected, n_expected, _ = expected_escalation(run)
    flagged = 0
    for s in range(seeds):
        rng = random.Random(s)
        routed = [rng.random() < too_long or rng.random() < escalate for _ in range(window)]
        flagged += judge(NO_INPUTS, REF, None, None, routed, expected, w, n_expected)["checks"]["escalation"]["flagged"]
    return flagged / seeds


def test_inputs_past_the_context_in_val_and_traffic_alike_are_no_escalation_drift(tmp_path):
    """val_escalation is measured on the val inputs that fit the student's context (calibration
    leaves the others out), while the served share counts too_long escalations: with 30% of long
    inputs in val and traffic alike, every window was flagged (exit 3) with no drift. Val's too-long
    inputs now count as escalated in the expected share, as the served share counts them."""
    _routing(tmp_path, 0.2, 70, 30)  # 30 of 100 val inputs too long; 20% of the 70 that fit escalated
    w = WatchConfig()
    assert _alarms(tmp_path, 200, 200, 0.3, 0.2, w) <= 0.05  # before: ~100%
    # Traffic that did grow longer (60% past the context) is still flagged.
    assert _alarms(tmp_path, 50, 200, 0.6, 0.2, w) >= 0.9
    # A routing.json without too-long val inputs (or from before serve counted them) is judged as it was.
    _routing(tmp_path, 0.2, 100)
    assert expected_escalation(tmp_path) == (0.2, 100, "")


def _per_calibration(n_val: int, window: int, shift: float = 0.0, cals: int = 100, checks: int = 100) -> list[float]:
    """Alarm rate per check for each of ``cals`` calibrations: serve's ``calibrate`` at target_escalation
    0.2 on n_val uniform confidences, the true escalation rate of its threshold then that threshold
    (plus ``shift``: drift), windows drawn at that rate and judged against the calibrated share."""
    from potstill.serve.routing import calibrate

    w, rates = WatchConfig(), []
    for c in range(cals):
        rng = random.Random(c)
        conf = [rng.random() for _ in range(n_val)]
        r = calibrate(conf, [1.0] * n_val, [0.0] * n_val, [False] * n_val, target_escalation=0.2, ood_quantile=1.0)
        true = min(1.0, max(0.0, r.confidence_threshold) + shift)
        hits = sum(judge(NO_INPUTS, REF, None, None, [rng.random() < true for _ in range(window)],
                         r.stats["val_escalation"], w, r.stats["n_val"])["checks"]["escalation"]["flagged"]
                   for _ in range(checks))
        rates.append(hits / checks)
    return sorted(rates)


def test_the_escalation_check_accounts_for_the_sampling_error_of_val_and_of_the_window():
    """The window's share was flagged above val's share + 0.15, both taken as exact: with 20 val
    inputs and a window of 50 (watch.min_requests) 13% of checks paged with no drift, and the worst
    10% of calibrations paged in 47% of their checks, for ever (the calibration is fixed). It is now
    flagged only where an exact one-sided test of the window against val's count (Fisher's, with
    routing.json's n_val) gives p <= watch.alpha as well: about alpha per check."""
    for n_val in (20, 50):
        rates = _per_calibration(n_val, 50)
        assert sum(rates) / len(rates) <= 0.02, (n_val, rates)  # before: 13% (20), 5.3% (50)
        assert rates[90] <= 0.05, (n_val, rates)  # the 90th percentile calibration; before: 47% (20), 12% (50)
    # A real surge, the rate up 30 points, is still flagged on most checks of most calibrations.
    assert _per_calibration(50, 200, shift=0.3, cals=20, checks=20)[10] >= 0.9


def test_a_run_of_three_checks_pages_at_most_alpha_of_the_time_with_no_drift():
    """Each check was judged at alpha on its own, so a run of three paged more often than alpha with no
    drift, and the label mix's chi-square tail is itself liberal at a small window (1.4% under p < 0.01
    at 50). The label mix now has a permutation p-value, and the three p-values are Holm-adjusted: a
    run flags under no drift at most alpha of the time. Windows and references here are drawn from one
    distribution each (a fresh reference per run, as the test's level is stated), gates off (min_effect
    0, label_tv_max 0, margin 0) so that the tests' levels decide."""
    w = WatchConfig(permutations=299, min_effect=0.0, label_tv_max=0.0, escalation_margin=0.0)
    labels, mix = ["a", "b", "c", "d"], [0.4, 0.3, 0.2, 0.1]
    runs = 600
    any_flag, per_check = 0, {"input": 0, "labels": 0, "escalation": 0}
    for s in range(runs):
        rng, g = random.Random(s), torch.Generator().manual_seed(s)
        live, ref = torch.randn(50, 4, generator=g), torch.randn(60, 4, generator=g)
        out = judge(live, ref, rng.choices(labels, mix, k=50), rng.choices(labels, mix, k=100),
                    [rng.random() < 0.2 for _ in range(50)], 0.2, w, 10_000)
        any_flag += out["drift"]
        for k in per_check:
            per_check[k] += out["checks"][k]["p_value"] <= w.alpha
    assert any_flag / runs <= 0.0125, (any_flag, per_check)  # alpha 0.01; each check at alpha: ~2.5%
    assert sum(per_check.values()) > any_flag  # the unadjusted p-values alone would have paged more runs


def test_a_check_on_fewer_than_min_requests_is_not_judged(tmp_path):
    """watch.min_requests was compared with the window alone: of 50 answered requests, 49 offered tools
    (sent to the teacher by design) and the 1 routed one escalated, and the escalation check read
    "100.0%", DRIFT, exit 3. Each check now needs min_requests of its own (the table says "not
    judged"); a window with enough of them is judged as before."""
    from potstill.watch.stage import markdown

    w = WatchConfig(permutations=299)
    g = torch.Generator().manual_seed(0)
    ref = torch.randn(40, 8, generator=g)
    few = judge(torch.randn(10, 8, generator=g) + 3.0, ref, ["a"] * 10, ["b"] * 40, [True] * 5, 0.0, w, 50)
    assert not few["drift"] and few["checks_judged"] == 0
    assert all(few["checks"][k]["p_value"] is None and not few["checks"][k]["flagged"]
               for k in ("input", "labels", "escalation"))
    report = {**few, "thresholds": w.model_dump(), "notes": [], "run_dir": "RUN", "student": "s", "created": "now",
              "traffic": {"n": 50, "selection": "latest 200", "first": "a", "last": "b"}}
    assert markdown(report).count("not judged (needs 50: watch.min_requests)") == 3
    # The same shifts on 50 of each: flagged.
    many = judge(torch.randn(50, 8, generator=g) + 3.0, ref, ["a"] * 50, ["b"] * 40, [True] * 50, 0.0, w, 50)
    assert all(many["checks"][k]["flagged"] for k in ("input", "labels", "escalation"))


def test_the_table_shows_the_n_each_check_read():
    """The table's title said "200 served requests" while the MMD ran on 141 of them (59 past the
    context) and the escalation share on 1; the n of each check was in report.json alone."""
    from rich.console import Console

    from potstill.watch.stage import table

    w = WatchConfig(permutations=299, min_requests=30)
    g = torch.Generator().manual_seed(0)
    out = judge(torch.randn(41, 8, generator=g), torch.randn(60, 8, generator=g), ["a", "b"] * 25, ["a", "b"] * 30,
                [False] * 37, 0.1, w, 50)
    report = {**out, "thresholds": w.model_dump(), "notes": [], "run_dir": "RUN", "student": "s", "created": "now",
              "traffic": {"n": 200, "selection": "latest 200", "first": "a", "last": "b"}}
    console = Console(width=400, record=True)
    console.print(table(report))
    text = console.export_text()
    assert "(n 41 vs 60)" in text and "n 50 vs 60)" in text and "0.0% of 37" in text, text


def _input_flags(shift: float, n: int, seeds: int) -> float:
    """Share of windows of n whose inputs (8-d Gaussians, the first coordinate moved by ``shift``)
    judge flags against a reference of 256 from the unshifted distribution."""
    w = WatchConfig(permutations=299)
    flagged = 0
    for s in range(seeds):
        g = torch.Generator().manual_seed(s)
        live, ref = torch.randn(n, 8, generator=g), torch.randn(256, 8, generator=g)
        live[:, 0] += shift
        flagged += judge(live, ref, None, None, [False] * n, None, w)["checks"]["input"]["flagged"]
    return flagged / seeds


def test_the_input_checks_effect_gate_means_the_same_at_every_window_size():
    """The gate was on MMD's estimate, noisier the smaller the window: a shift whose true MMD is 0.07,
    under watch.min_effect 0.1, was flagged in 12% of windows of 50 and in none of 500, so the flag
    fell as data grew. The gate is now on MMD's one-sided 95% lower bound: a shift under min_effect
    is flagged at no window size, one above it (MMD ~0.18) the more often the larger the window."""
    assert _input_flags(0.4, 50, 40) <= 0.03  # before: 0.125
    small, large = _input_flags(1.0, 50, 20), _input_flags(1.0, 200, 20)
    assert small <= large and large >= 0.9, (small, large)
