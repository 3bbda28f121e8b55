"""synthesize's Screen finds every near duplicate at its bars, as a brute-force search over all pairs does."""

from __future__ import annotations

import random

from potstill.curate.dedup import jaccard, normalise, shingles
from potstill.synthesize import Screen

TEMPLATE = "Write to support: my order {} never arrived and the tracking page says {}."


def test_a_pair_just_over_the_bar_is_always_rejected():
    # MinHash LSH, the earlier candidate step with its fixed seed, let this one through (Jaccard 0.82 >= 0.8).
    seed = "her be in are are in that is be are the not ticket 875365 about the late parcel"
    near = "her be in are are in that xs be are the not ticket 875365 about the late parcyl"
    assert Screen([("a seed input", seed)], [], 0.8, 0.5).check(near) == \
        "duplicates a seed input (Jaccard 0.82 >= 0.8)"


def test_the_same_decisions_as_a_brute_force_search():
    rng = random.Random(0)
    vocab = ["".join(rng.choice("abcdefghij") for _ in range(rng.randint(2, 6))) for _ in range(60)]

    def phrase(n: int) -> str:
        return " ".join(rng.choice(vocab) for _ in range(n))

    tests = [phrase(12) for _ in range(30)] + [TEMPLATE.format(phrase(3), phrase(4)) for _ in range(3)]
    seeds = [TEMPLATE.format(phrase(3), phrase(4)) for _ in range(10)]
    candidates = []
    for _ in range(300):
        t = TEMPLATE.format(phrase(rng.randint(1, 4)), phrase(rng.randint(1, 5))) if rng.random() < 0.7 else \
            rng.choice(seeds + candidates)[:-rng.randint(1, 4)]
        candidates.append(t)
    screen = Screen([("a seed input", s) for s in seeds], tests, 0.8, 0.5)
    test_sets = [shingles(t) for t in tests]
    kept = [("a seed input", shingles(s)) for s in seeds]
    exact = {normalise(s) for s in seeds}
    why: list[str] = []
    for c in candidates:
        sh = shingles(c)
        near_test = max(jaccard(sh, t) for t in test_sets)
        best = max(((jaccard(sh, k), kind) for kind, k in kept), default=(0.0, ""))
        if near_test >= 0.5:
            want = f"near a test input (Jaccard {near_test:.2f} >= 0.5)"
        elif normalise(c) in exact:
            want = "duplicates a seed input (exact)" if normalise(c) in {normalise(s) for s in seeds} else \
                "duplicates a synthetic input (exact)"
        elif best[0] >= 0.8:
            want = f"duplicates {best[1]} (Jaccard {best[0]:.2f} >= 0.8)"
        else:
            want = None
            kept.append(("a synthetic input", sh))
            exact.add(normalise(c))
        why.append((want or 'kept').split(' (')[0])
        assert screen.check(c) == want, c
    assert {'kept', 'near a test input', 'duplicates a seed input', 'duplicates a synthetic input'} <= set(why)
