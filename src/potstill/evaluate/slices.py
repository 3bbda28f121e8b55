"""Slices of the test set and the student's gap to the teacher on each, with bootstrap intervals.

A slice is a record tag (``tag:news``), a label (``label:sports``: the gold label where there is
one, else the teacher's; only for tasks with a label set) or an input-length bucket (terciles of
words in the input). Structured outputs get one row per top-level field instead of labels
(``field:date``: how often the student's value of that field equals the teacher's): a slice per
distinct reference object would give one slice per example. Each gets a verdict: go, no-go, or
too small to judge (fewer than ``min_n`` examples).
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
    """The slices one record falls in; pass ``label=None`` for tasks without a label set."""
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


def _row(name: str, idx: list[int], student_agree: Sequence[float | None],
         untrained_agree: Sequence[float | None] | None, student_gold: Sequence[float | None],
         teacher_gold: Sequence[float | None], bar: QualityBar, min_n: int, n_boot: int, seed: int) -> dict[str, Any]:
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
    return row


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
    return [_row(name, members[name], student_agree, untrained_agree, student_gold, teacher_gold,
                 bar, min_n, n_boot, seed)
            for name in ["all", *sorted(k for k in members if k != "all")]]


def output_fields(schema: dict[str, Any] | None, teacher: Sequence[Any], most: int = 50) -> list[str]:
    """Top-level fields of a structured output: the schema's ``properties`` in their order, else
    the keys of the teacher's answers, most frequent first (at most ``most``: a row each)."""
    props = (schema or {}).get("properties")
    if isinstance(props, dict) and props:
        return list(props)[:most]
    seen: dict[str, int] = {}
    for t in teacher:
        for k in t if isinstance(t, dict) else ():
            seen[str(k)] = seen.get(str(k), 0) + 1
    return sorted(seen, key=lambda k: -seen[k])[:most]


def _same_field(a: Any, b: Any, field: str) -> float | None:
    """1.0 where ``a`` has ``b``'s value of ``field`` (both lacking it counts as the same), None
    where ``b`` is not an object (an invalid reference says nothing about its fields)."""
    if not isinstance(b, dict):
        return None
    return float(isinstance(a, dict) and a.get(field) == b.get(field))


def field_table(fields: Sequence[str], student: Sequence[Any], untrained: Sequence[Any] | None,
                teacher: Sequence[Any], gold: Sequence[Any], bar: QualityBar, min_n: int, n_boot: int,
                seed: int = 0) -> list[dict[str, Any]]:
    """One ``field:NAME`` row per field, in the format of :func:`slice_table`'s rows: per-example
    scores are that field's equality with the teacher's (and, for the gold gap, with gold's)."""
    rows = []
    for f in fields:
        agree = [_same_field(s, t, f) for s, t in zip(student, teacher)]
        idx = [i for i, a in enumerate(agree) if a is not None]
        if not idx:
            continue
        raw = [_same_field(u, t, f) for u, t in zip(untrained, teacher)] if untrained is not None else None
        s_gold = [_same_field(s, g, f) for s, g in zip(student, gold)]
        t_gold = [_same_field(t, g, f) for t, g in zip(teacher, gold)]
        rows.append(_row(f"field:{f}", idx, agree, raw, s_gold, t_gold, bar, min_n, n_boot, seed))
    return rows
