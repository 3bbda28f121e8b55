"""The stratified sample a reviewer sees: round-robin over (teacher answer, slice) strata.

Round-robin rather than proportional: a rare label gets as many looks as a common one until it
runs out, because the teacher's errors hide in the rare labels. Within a stratum, records come in
seeded-hash order, so the sample is the same on every start and a decided record stays in it.
Only a label is a stratum: a generated answer (free text, JSON) is nearly unique, and strata of
one record each, taken in sorted order, would make the sample the answers that sort first.
"""

from __future__ import annotations

import hashlib
from typing import Any, Callable

from potstill.records import Record


def _rank(rec_id: str, seed: int) -> str:
    return hashlib.sha256(f"{seed}:{rec_id}".encode()).hexdigest()


def stratified_sample(records: list[Record], n: int, seed: int = 0, labelled: bool = True,
                      parse: Callable[[str], Any] | None = None) -> list[Record]:
    """``labelled``: the task answers with labels (they are strata); otherwise only slices are.
    ``parse``: the task's reading of an answer, so "Sports." and "sports" are one stratum (keyed by
    the raw text, an API teacher's punctuation or case made a stratum of its own, as many looks as a label)."""
    strata: dict[str, list[Record]] = {}
    for r in records:
        if not r.valid or r.output is None or r.meta.get("source") == "real":
            continue
        answer = str((parse(r.output) if parse else None) or r.output.strip().lower()) if labelled else ""
        strata.setdefault(f"{answer}|{','.join(sorted(r.slice))}", []).append(r)
    queues = [sorted(rs, key=lambda r: _rank(r.id, seed)) for _, rs in sorted(strata.items())]
    out: list[Record] = []
    seen: set[str] = set()
    while len(out) < n and any(queues):
        for q in queues:
            if q and len(out) < n:
                r = q.pop(0)
                if r.id not in seen:  # exact duplicates share an id: show one
                    seen.add(r.id)
                    out.append(r)
    return out
