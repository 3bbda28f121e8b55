"""Evaluate: untrained student vs teacher vs trained student on the held-out test split.

The verdict and the break-even are pure functions over measured numbers; ``stage.py`` measures,
``slices.py`` cuts the test set, ``metrics.py`` scores, ``html.py`` renders report.html.
"""

from __future__ import annotations

from typing import Any

from potstill.config import QualityBar


def verdict(models: dict[str, dict[str, Any]], bar: QualityBar,
            slices: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """go/no-go for the trained student against the quality bar, with the reason for each check.

    Overall checks run on the whole test split; with ``slices`` every slice large enough to judge
    must pass too, and the slices that pass are named (switch for those, keep the teacher elsewhere).
    """
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
    out: dict[str, Any] = {}
    if slices is not None:
        judged = [r for r in slices if r["slice"] != "all" and r["verdict"] != "too small"]
        bad = [r["slice"] for r in judged if r["verdict"] == "no-go"]
        checks.append({"check": "every slice large enough to judge passes the bar",
                       "value": f"{len(judged) - len(bad)}/{len(judged)} slices", "pass": not bad})
        out = {"go_slices": [r["slice"] for r in judged if r["verdict"] == "go"], "no_go_slices": bad,
               "too_small_slices": [r["slice"] for r in slices if r["verdict"] == "too small"]}
    go = all(c["pass"] for c in checks)
    failed = [c["check"] for c in checks if not c["pass"]]
    reason = "all checks pass" if go else "fails: " + "; ".join(failed)
    if out.get("no_go_slices"):
        reason += " (below the bar on: " + ", ".join(out["no_go_slices"]) + ")"
    return {"go": go, "checks": checks, "reason": reason, **out}


def break_even(teacher_cost_per_call: float, student_cost_per_call: float, one_time_usd: float,
               monthly_calls: int) -> dict[str, Any]:
    """Calls (and months at the configured volume) until the student's savings repay distilling."""
    saving = teacher_cost_per_call - student_cost_per_call
    if saving <= 0:
        return {"saving_per_call_usd": saving, "one_time_usd": one_time_usd, "calls": None, "months": None,
                "monthly_calls": monthly_calls,
                "note": "the student is not cheaper per call, so it never breaks even"}
    calls = one_time_usd / saving
    return {"saving_per_call_usd": saving, "one_time_usd": one_time_usd, "calls": calls, "monthly_calls": monthly_calls,
            "months": calls / monthly_calls if monthly_calls else None}


def break_even_curve(teacher_cost_per_call: float, student_cost_per_call: float, one_time_usd: float,
                     monthly_calls: int, months: float | None, points: int = 25) -> dict[str, Any]:
    """Cumulative spend of staying on the teacher vs switching, month by month (the break-even plot).

    The horizon is twice the break-even month (so the crossing sits mid-plot), else 12 months.
    """
    horizon = 2 * months if months and months > 0 else 12.0
    xs = [horizon * i / (points - 1) for i in range(points)]
    return {"months": xs, "teacher_usd": [x * monthly_calls * teacher_cost_per_call for x in xs],
            "student_usd": [one_time_usd + x * monthly_calls * student_cost_per_call for x in xs]}
