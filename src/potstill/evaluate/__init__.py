"""Evaluate: untrained student vs teacher vs trained student on the held-out test split."""

from __future__ import annotations

from typing import Any

from potstill.config import QualityBar


def verdict(models: dict[str, dict[str, Any]], bar: QualityBar) -> dict[str, Any]:
    """go/no-go for the trained student against the quality bar, with the reason for each check."""
    s, t = models["student"], models["teacher"]
    checks = []
    agr = s.get("agreement_with_teacher")
    checks.append({
        "check": f"agreement with teacher >= {bar.min_agreement:.0%}",
        "value": agr, "pass": agr is not None and agr >= bar.min_agreement,
    })
    if bar.min_relative_quality is not None and s.get("gold_metric") is not None and t.get("gold_metric"):
        rel = s["gold_metric"] / t["gold_metric"]
        checks.append({
            "check": f"gold metric >= {bar.min_relative_quality:.0%} of the teacher's",
            "value": rel, "pass": rel >= bar.min_relative_quality,
        })
    go = all(c["pass"] for c in checks)
    failed = [c["check"] for c in checks if not c["pass"]]
    return {"go": go, "checks": checks,
            "reason": "all checks pass" if go else "fails: " + "; ".join(failed)}


def break_even(teacher_cost_per_call: float, student_cost_per_call: float, one_time_usd: float,
               monthly_calls: int) -> dict[str, Any]:
    """Calls (and months at the configured volume) until the student's savings repay distilling."""
    saving = teacher_cost_per_call - student_cost_per_call
    if saving <= 0:
        return {"saving_per_call_usd": saving, "calls": None, "months": None,
                "note": "the student is not cheaper per call, so it never breaks even"}
    calls = one_time_usd / saving
    return {"saving_per_call_usd": saving, "one_time_usd": one_time_usd, "calls": calls,
            "months": calls / monthly_calls if monthly_calls else None}
