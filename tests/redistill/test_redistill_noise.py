"""The promotion rule over many seeded simulated comparisons (``compare``/``decide`` as redistill
calls them): how often a challenger that is no better gets promoted, and what a cron loop of
promotions does to the frozen-test score. Students are per-example scores with a shared difficulty,
so the two students' mistakes are correlated as a real pair's are."""

from __future__ import annotations

import random

from potstill.config import RedistillConfig
from potstill.redistill.compare import compare, decide

N_BOOT = 200


def _pair(rng: random.Random, n: int, p_challenger: float, p_champion: float) -> tuple[list[float], list[float]]:
    """(challenger, champion) per-example scores: half the examples share one coin (both right on the
    easy ones), the rest are independent."""
    a, b = [], []
    for _ in range(n):
        if rng.random() < 0.5:
            u = rng.random()
            a.append(float(u < p_challenger)), b.append(float(u < p_champion))
        else:
            a.append(float(rng.random() < p_challenger)), b.append(float(rng.random() < p_champion))
    return a, b


def _promoted(seeds: int, n_new: int, p_new: tuple[float, float], rc: RedistillConfig) -> float:
    """Share of seeds promoting a challenger; on the frozen test (250 examples) both are equal."""
    wins = 0
    for s in range(seeds):
        rng = random.Random(s)
        ch, cp = _pair(rng, n_new, *p_new)
        fch, fcp = _pair(rng, 250, 0.87, 0.87)
        new = compare({"teacher": cp}, {"teacher": ch}, N_BOOT, s)
        wins += decide(new, compare({"teacher": fcp}, {"teacher": fch}, N_BOOT, s), rc)["promote"]
    return wins / seeds


def test_a_challenger_no_better_than_the_champion_is_rarely_promoted():
    """The default rule was the point estimate, gain > 0: between two equally good students a coin
    flip, and 36% of 400 seeds promoted one (each a hot swap and a new champion) on a 39-example
    new-traffic test. The paired 95% interval of the gain must now lie above 0 (one-sided 2.5%)."""
    rc = RedistillConfig()
    assert rc.require_significant is True
    assert _promoted(200, 39, (0.85, 0.85), rc) <= 0.06  # the old rule: ~0.36
    # Worse on new traffic: not promoted; clearly better (+20 points): promoted most of the time.
    assert _promoted(100, 39, (0.82, 0.85), rc) <= 0.03
    assert _promoted(100, 39, (0.95, 0.75), rc) >= 0.5



def _frozen_answers(rng: random.Random, u: list[float], p: float) -> list[float]:
    """A student of quality ``p`` on the fixed frozen test: right on example i where its difficulty
    u[i] is below p (``None``: an independent coin of this student's). Students trained from one
    base on mostly the same data share most mistakes: 90% of the examples have a fixed difficulty."""
    return [float((x if x is not None else rng.random()) < p) for x in u]


def _cron(deployment: int, rounds: int = 20) -> tuple[float, float]:
    """(true, measured) frozen-test agreement lost by the served student after ``rounds`` redistill
    rounds, each with a challenger clearly better on that round's new traffic (0.92 vs 0.75) and 1.5
    points worse on the frozen test than the champion it faces. Decision records carry the lineage
    as redistill writes them."""
    from potstill.redistill.compare import frozen_origin

    rng = random.Random(deployment)
    u = [rng.random() if rng.random() < 0.9 else None for _ in range(250)]
    p, name, records = 0.87, "student", []
    first = champion = _frozen_answers(rng, u, p)
    for r in range(rounds):
        challenger = _frozen_answers(rng, u, p - 0.015)
        ch, cp = _pair(rng, 39, 0.92, 0.75)
        frozen = compare({"teacher": champion}, {"teacher": challenger}, N_BOOT, r)
        origin = frozen_origin(records, name, frozen, "test")
        d = decide(compare({"teacher": cp}, {"teacher": ch}, N_BOOT, r), frozen, RedistillConfig(), origin=origin)
        promotion = {"previous": name, "current": f"students/c{r}"} if d["promote"] else None
        records.append({"id": f"r{r}", "promotion": promotion,
                        "frozen_origin": {**origin, "measured_in": origin["measured_in"] or f"r{r}"}})
        if d["promote"]:
            p, champion, name = p - 0.015, challenger, f"students/c{r}"
    return 0.87 - p, (sum(first) - sum(champion)) / len(first)


def test_frozen_test_losses_do_not_add_up_over_promotions():
    """max_frozen_drop was measured against the current champion only, so each promotion could lose
    up to 0.02 again: a cron loop of challengers each 1.5 points worse on the frozen test lost 0.075
    median in 20 rounds (0.165 at worst of 40). The drop is now also bounded against the first
    champion of the lineage, whose frozen score each decision record carries on: what the served
    student scores on the frozen test stays within 0.02 of it, and the true loss beyond that comes
    only from the frozen test's own noise (median 0.03)."""
    runs = [_cron(d) for d in range(40)]
    assert max(measured for _, measured in runs) <= 0.02 + 1e-9
    true = sorted(t for t, _ in runs)
    assert true[len(true) // 2] <= 0.031, true
