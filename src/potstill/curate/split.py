"""Train/val/test assignment by a seeded hash of the normalised input, stratified by label and slice.

- Fractions (``val`` and ``test`` both < 1) are hash thresholds: a record goes to test when its
  hash falls under ``test``, whatever else is in the dataset. A record therefore never changes
  split when new records arrive, and every stratum gets the asked share in expectation.
- Counts (either >= 1; a fraction beside one is read as its share of the records) are split over
  strata in proportion to their sizes (largest remainder), and each stratum gives its lowest-hash
  records. Sizes and stratification are then exact, but a new record changes every stratum's
  share: it can move the records nearest any stratum's cut (in hash order), its own or another's
  (100, 100 and 150 records with test 50 give 14, 14, 22; one more in the first gives 15, 14, 21).
- A fraction above 0 that its threshold left empty (12 records at val 0.1 expect 1.2 in val, and
  get none 28% of the time: 0.9^12) takes the train record of lowest hash, test before val, while
  train keeps one: serve calibrates on val and evaluate reads test, and an empty one stopped them.
  Only train gives: a later, larger set can send that record back to train, never a trained-on
  record to test (a set whose test is empty by threshold had an empty one before too).
"""

from __future__ import annotations

import hashlib
from typing import Callable

from potstill.curate.dedup import normalise
from potstill.records import Record


def rank(text: str, seed: int) -> float:
    """A uniform number in [0, 1) fixed by the input text and the seed."""
    digest = hashlib.sha256(f"{seed}:{normalise(text)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _quotas(sizes: dict[str, int], total: int) -> dict[str, int]:
    """Split ``total`` over strata in proportion to ``sizes`` (Hamilton's largest remainder)."""
    n = sum(sizes.values())
    if n == 0:
        return {k: 0 for k in sizes}
    total = min(total, n)
    exact = {k: total * s / n for k, s in sizes.items()}
    out = {k: int(v) for k, v in exact.items()}
    for k in sorted(exact, key=lambda k: (-(exact[k] - out[k]), k))[: total - sum(out.values())]:
        out[k] += 1
    return out


def split(records: list[Record], val: float, test: float, seed: int,
          stratum: Callable[[Record], str] = lambda r: "") -> tuple[list[Record], list[Record], list[Record]]:
    """(train, val, test); each list in a stable order (by hash)."""
    ranked = sorted(records, key=lambda r: rank(r.text, seed))
    tr: list[Record] = []
    va: list[Record] = []
    te: list[Record] = []
    if test < 1 and val < 1:
        for r in ranked:
            u = rank(r.text, seed)
            (te if u < test else va if u < test + val else tr).append(r)
        for share, part in ((test, te), (val, va)):
            if share > 0 and not part and len(tr) > 1:
                part.append(tr.pop(0))  # tr is in hash order: its first is the nearest the cut
        return tr, va, te
    n = len(ranked)
    n_test = int(test) if test >= 1 else round(test * n)
    n_val = int(val) if val >= 1 else round(val * n)
    groups: dict[str, list[Record]] = {}
    for r in ranked:
        groups.setdefault(stratum(r), []).append(r)
    sizes = {k: len(v) for k, v in groups.items()}
    q_test = _quotas(sizes, n_test)
    q_val = _quotas({k: sizes[k] - q_test[k] for k in sizes}, n_val)
    where: dict[int, list[Record]] = {}
    for k, rs in groups.items():
        for i, r in enumerate(rs):
            where[id(r)] = te if i < q_test[k] else va if i < q_test[k] + q_val[k] else tr
    for r in ranked:
        where[id(r)].append(r)
    return tr, va, te
