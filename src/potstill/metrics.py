"""Metrics shared by pilot, evaluate and serve: pure functions over parsed outputs."""

from __future__ import annotations

from typing import Any

from potstill.records import Record
from potstill.tasks import Task


def mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def agreement(task: Task, preds: list[Any], refs: list[Any]) -> float | None:
    """Mean task agreement between predictions and references (skipping missing references)."""
    pairs = [(p, r) for p, r in zip(preds, refs) if r is not None]
    return mean([task.agree(p, r) for p, r in pairs])


def compare(task: Task, parsed: list[Any], records: list[Record]) -> dict[str, Any]:
    """Agreement with the teacher's answers and, where records carry gold, the gold metric; for free
    text also the mean chrF against the teacher's answers."""
    teacher = [task.parse(r.output) if r.output is not None else None for r in records]
    gold = [task.gold(r) for r in records]
    n_gold = sum(g is not None for g in gold)
    out = {
        "n": len(records),
        "agreement_with_teacher": agreement(task, parsed, teacher),
        "gold_metric": agreement(task, parsed, gold) if n_gold else None,
        "n_gold": n_gold,
    }
    if task.name == "freetext":
        # Agreement is exact match, which a summary or a rewrite almost never reaches: chrF says how close.
        from potstill.evaluate.metrics import text_scores

        out["chrf_with_teacher"] = text_scores(parsed, teacher)["chrf"]
    return out


def teacher_gold_metric(task: Task, records: list[Record]) -> float | None:
    teacher = [task.parse(r.output) if r.output is not None else None for r in records]
    gold = [task.gold(r) for r in records]
    pairs = [(t, g) for t, g in zip(teacher, gold) if g is not None and t is not None]
    return mean([task.agree(t, g) for t, g in pairs])
