"""Slices of the test set and the student's gap to the teacher on each, with bootstrap intervals.

A slice is a record tag (``tag:news``), a label (``label:sports``: the gold label where there is
one, else the teacher's) or an input-length bucket (terciles of words in the input). Each gets
a verdict: go, no-go, or too small to judge (fewer than ``min_n`` examples).
"""

from __future__ import annotations

from typing import Any, Sequence

from potstill.config import QualityBar
from potstill.evaluate.bootstrap import bootstrap_gap, bootstrap_mean
from potstill.records import Record


def length_edges(records: Sequence[Record]) -> tuple[int, int]:
    """Word counts at the 1/3 and 2/3 points of the inputs: short <= a < medium <= b < long."""
    words = sorted(len(r.text.split()) for r in records)
    if not words:
        return 0, 0
    return words[(len(words) - 1) // 3], words[2 * (len(words) - 1) // 3]


def slice_names(record: Record, label: Any, edges: tuple[int, int]) -> list[str]:
    names = [f"tag:{t}" for t in record.slice]
    if label is not None:
        names.append(f"label:{label}")
    w = len(record.text.split())
    a, b = edges
    names.append(f"length:short (<={a} words)" if w <= a else
                 f"length:medium ({a + 1}-{b} words)" if w <= b else f"length:long (>{b} words)")
    return names


def judge(agreement: float | None, rel_quality: float | None, n: int, bar: QualityBar, min_n: int) -> dict[str, Any]:
    """go / no-go / too small for one slice, with the reason in words."""
    if n < min_n:
        return {"verdict": "too small", "reason": f"too small to judge: {n} examples < {min_n}"}
    failed, passed = [], []
    if agreement is not None:
        msg = f"agreement {agreement:.1%} vs bar {bar.min_agreement:.0%}"
        (passed if agreement >= bar.min_agreement else failed).append(msg)
    if bar.min_relative_quality is not None and rel_quality is not None:
        msg = f"gold metric {rel_quality:.1%} of the teacher's vs bar {bar.min_relative_quality:.0%}"
        (passed if rel_quality >= bar.min_relative_quality else failed).append(msg)
    if failed:
        return {"verdict": "no-go", "reason": "; ".join(failed)}
    return {"verdict": "go", "reason": "; ".join(passed)}


def slice_table(names: Sequence[list[str]], student_agree: Sequence[float],
                untrained_agree: Sequence[float] | None, student_gold: Sequence[float | None],
                teacher_gold: Sequence[float | None], bar: QualityBar, min_n: int, n_boot: int,
                seed: int = 0) -> list[dict[str, Any]]:
    """One row per slice (``all`` first): agreement with the teacher, the gold gap, and a verdict.

    ``*_agree`` are per-example agreements with the teacher in [0, 1]; ``*_gold`` per-example
    scores against gold (None where an example has no gold).
    """
    members: dict[str, list[int]] = {"all": list(range(len(names)))}
    for i, ns in enumerate(names):
        for n in ns:
            members.setdefault(n, []).append(i)
    rows = []
    for name in ["all", *sorted(k for k in members if k != "all")]:
        idx = members[name]
        row: dict[str, Any] = {"slice": name, "n": len(idx),
                               "agreement": bootstrap_mean([student_agree[i] for i in idx], n_boot, seed=seed)}
        if untrained_agree is not None:
            row["untrained_agreement"] = bootstrap_mean([untrained_agree[i] for i in idx], n_boot, seed=seed)
        g = [i for i in idx if student_gold[i] is not None and teacher_gold[i] is not None]
        rel = None
        if g:
            s, t = [student_gold[i] for i in g], [teacher_gold[i] for i in g]
            gap = bootstrap_gap(s, t, n_boot, seed=seed)
            ts = sum(t) / len(t)
            rel = (sum(s) / len(s)) / ts if ts else None
            row["gold"] = {"n": len(g), "student": sum(s) / len(s), "teacher": ts, "gap": gap, "relative": rel}
        row.update(judge(row["agreement"]["value"], rel, len(idx), bar, min_n))
        rows.append(row)
    return rows
