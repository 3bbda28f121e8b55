"""Evaluate: untrained student vs teacher vs trained student on the held-out test split.

The verdict and the break-even are pure functions over measured numbers (the rules are in the
README's "The verdict"); ``stage.py`` measures, ``slices.py`` cuts the test set and judges each
slice, ``metrics.py`` scores, ``html.py`` renders report.html.
"""

from __future__ import annotations

import math
from typing import Any

from potstill.config import QualityBar
from potstill.evaluate.exact import binomial_tail


def _usd(x: float) -> str:
    """Dollars to three significant digits below $1 ($0.0540), cents above."""
    return f"${x:,.2f}" if x == 0 or abs(x) >= 1 else f"${x:.{2 - math.floor(math.log10(abs(x)))}f}"


DAYS_PER_MONTH = 30.44  # 365.25 / 12


def months_text(months: float) -> str:
    """A break-even time a newcomer reads: months to two places, or, under 0.005 months (about 3.6
    hours), hours or minutes: the quickstart's one-time cost repaid at a million calls a month read
    "0.00 months", as if never counted."""
    if months >= 0.005:
        return f"{months:.2f} months"
    hours = months * DAYS_PER_MONTH * 24
    return f"{hours:.1f} hours" if hours >= 1 else f"{hours * 60:.0f} minutes" if hours * 60 >= 1 else "under a minute"


def cost_words(cost: dict[str, Any], usd: Any) -> str:
    """What judging these inputs has cost: the ledger's total for their prompts, every run's calls (a rerun
    read $0 beside the dollars its first run paid), and this run's new calls, failed ones too."""
    new = f"{cost['calls']} new call{'s' if cost['calls'] != 1 else ''}" + (f", {usd(cost['cost_usd'])}" if cost["calls"] else "")
    if "recorded_usd" not in cost:  # an eval.json from before the recorded total
        return new
    return f"{usd(cost['recorded_usd'])} (recorded over {cost['recorded_calls']} calls; {new})"


def _per_1k(student: float, teacher: float, too_long: float = 0.0, escalated: float = 0.0) -> str:
    """The two costs per 1,000 calls; the student's that of a served call, whose ``too_long`` share
    (inputs longer than its context) the teacher answers, and whose ``escalated`` share of the answers
    it reads serve sends on to the teacher (``stage._break_even``)."""
    parts = ([f"the {100 * too_long:.1f}% of inputs longer than its context at the teacher's price"] if too_long else []) + (
        [f"the {100 * escalated:.1f}% of its answers serve escalates (failing the task's check, cut at the token "
         "budget) at the teacher's price on top of its own"] if escalated else [])
    return (f"{_usd(1000 * student)} vs {_usd(1000 * teacher)} per 1,000 calls"
            + (", the student's with " + " and ".join(parts) if parts else ""))


def _names(xs: list[str]) -> str:
    return xs[0] if len(xs) == 1 else ", ".join(xs[:-1]) + " and " + xs[-1]


MOST_NAMED = 12  # slices named in one list of the verdict: 200 labels named every one (2,706 px of names)


def largest(names: list[str], sizes: dict[str, int], most: int = MOST_NAMED) -> tuple[list[str], int]:
    """``names`` whole when ``most`` or fewer, else the ``most`` with the most examples (``sizes``), kept in
    their order, and how many are left out (a list names them "N other slices", the per-slice table all)."""
    if len(names) <= most:
        return list(names), 0
    keep = set(sorted(names, key=lambda s: -sizes.get(s, 0))[:most])  # stable: ties keep their order
    return [s for s in names if s in keep], len(names) - most


def _others(n: int) -> str:
    return f"{n} other slice{'s' if n != 1 else ''} (the per-slice table lists every one)"


def _capped(rows: list[dict[str, Any]]) -> str:
    """The slices of ``rows`` named, at most MOST_NAMED of them, the largest."""
    kept, rest = largest([r["slice"] for r in rows], {r["slice"]: r["n"] for r in rows})
    return _names(kept + ([_others(rest)] if rest else []))


# A 95th percentile of fewer calls is mostly the slowest one or two (of 2 calls: x0 + 0.95 (x1 - x0)); from 20,
# one call in 20, the tail it describes, is among them. Fewer can still fail the bar: a true p95 within it means
# at most 5% of calls are slower than the bar, so k or more of n timed calls over it happen with probability at
# most P(Binomial(n, 0.05) >= k) (5 of 10: 6e-5; 1 of 10: 40%), and under SLOW_TAIL that is not chance.
MIN_P95_SAMPLES = 20
SLOW_TAIL = 0.025


def slow_calls(lat: dict[str, Any], lim: float) -> tuple[int, bool]:
    """How many of the timed calls in ``lat`` (``latency_stats``) took longer than ``lim`` seconds, and
    whether that is the count (``times_s``) or, where only the percentiles were kept, a lower bound: a
    percentile over ``lim`` puts every call from the one it is read at (``percentile``'s upper neighbour,
    or the call itself where it falls on one) over it too."""
    if "times_s" in lat:
        return sum(t > lim for t in lat["times_s"]), True
    n, k = lat.get("n") or 0, 0
    for q, x in ((0.5, lat.get("p50_s")), (0.95, lat.get("p95_s"))):
        if x is not None and x > lim and n:
            pos = (n - 1) * q
            k = max(k, n - (int(pos) if pos == int(pos) else min(int(pos) + 1, n - 1)))
    return k, False


def economics(teacher_usd_per_call: float, student_usd_per_call: float, be: dict[str, Any],
              student_p95_s: float | None, bar: QualityBar, p95_n: int | None = None,
              slow: tuple[int, bool] | None = None) -> list[dict[str, Any]]:
    """The money and time checks of the bar, each {check, value, pass, result, why} (``why``: the failure in
    words; ``result`` pass, fail or inconclusive: a p95 from fewer than MIN_P95_SAMPLES timed calls, ``p95_n``,
    cannot pass the latency bar, and fails it only where ``slow`` (``slow_calls``: the timed calls over the bar)
    are too many for a p95 within it (SLOW_TAIL; left out, those the p95 itself shows); else it is inconclusive)."""
    t, s = teacher_usd_per_call, student_usd_per_call
    per_1k = _per_1k(s, t, be.get("too_long_share") or 0.0, be.get("escalated_share") or 0.0)
    if s < t:
        why, value = None, (f"{t / s:.1f}x cheaper" if s > 0 else "free") + f" ({per_1k})"
    elif s == t:
        why = value = f"the student costs the same per call as the teacher ({per_1k})"
    elif t > 0:
        value = f"{s / t:.1f}x dearer ({per_1k})"
        why = f"the student is {s / t:.1f}x more expensive per call than the teacher ({per_1k})"
    else:
        why = value = (f"the teacher cost nothing per call as recorded, so the student ({_usd(1000 * s)} per 1,000 "
                       "calls) cannot save money (set teacher.price to what its calls cost: usd_per_call for a replay "
                       "teacher's recorded traffic, usd_per_hour for a server of your own, or the per-token prices "
                       "of a model no price table knows)")
    checks = [{"check": "student cheaper per call than the teacher", "value": value, "pass": why is None, "why": why}]
    if bar.max_break_even_months is not None and s < t:
        months, h = be.get("months"), bar.max_break_even_months
        why = None
        if months is None:
            why = (f"no monthly volume is configured (evaluate.monthly_calls = {be.get('monthly_calls')}), "
                   f"so the one-time {_usd(be['one_time_usd'])} is never repaid (set evaluate.monthly_calls to the "
                   "expected calls a month, or evaluate.quality_bar.max_break_even_months to null to leave the "
                   "break-even out of the verdict)")
        elif months > h:
            why = (f"the student repays the one-time {_usd(be['one_time_usd'])} only after {months:.1f} months at "
                   f"{be['monthly_calls']:,} calls a month, past the {h:g}-month horizon")
        checks.append({"check": f"break-even within {h:g} months", "pass": why is None, "why": why,
                       "value": "never" if months is None else "at once (no one-time cost)" if not be.get("calls")
                       else months_text(months)})
    if bar.max_p95_latency_s is not None:
        lim, p95 = bar.max_p95_latency_s, student_p95_s
        ok = p95 is not None and p95 <= lim
        shown = None if p95 is None else _beside(p95, lim)
        why = None if ok else (f"the student's p95 latency of {shown} s is over the {lim:g} s bar" if p95 is not None
                               else "the student's p95 latency was not measured")
        few = p95 is not None and p95_n is not None and p95_n < MIN_P95_SAMPLES
        slow = slow or slow_calls({"n": p95_n, "p95_s": p95}, lim)
        chance = binomial_tail(slow[0], p95_n, 0.05) if few else 1.0
        k, of = slow[0], f"of its {p95_n} timed calls"
        if chance <= SLOW_TAIL:
            few = False
            why = (f"the student's p95 latency of {shown} s is over the {lim:g} s bar: {'' if slow[1] else 'at least '}{k} {of} "
                   f"took longer than {lim:g} s, which a p95 within "
                   f"the bar gives {_chance(chance)} of the time")
        elif few:
            why = (f"the student's p95 latency ({shown} s) comes from {p95_n} timed call{'s' if p95_n != 1 else ''}, "
                   f"fewer than the {MIN_P95_SAMPLES} a 95th percentile needs to pass the {lim:g} s bar"
                   + (f"; it is over the bar, but {'only' if slow[1] else 'its percentiles show only'} {k} {of} "
                      f"{'took ' if slow[1] else ''}longer than {lim:g} s, which a p95 within the bar gives {_chance(chance)} of "
                      "the time, too often to fail it" if not ok else "")
                   + " (raise evaluate.latency_samples, with as many test inputs)")
        checks.append({"check": f"student p95 latency <= {lim:g} s", "pass": ok and not few, "why": why,
                       "result": "inconclusive" if few else "pass" if ok else "fail",
                       "value": "-" if p95 is None else f"{shown} s" + (f" (n={p95_n})" if p95_n is not None else "")})
    return [{**c, "result": c.get("result") or ("pass" if c["pass"] else "fail")} for c in checks]


def _chance(p: float) -> str:
    """A small probability as a reader takes it: "1.2%", "1 in 16,000", "less than 1 in a million"."""
    return (f"{100 * p:.1f}%" if p >= 0.001 else f"1 in {float(f'{1 / p:.2g}'):,.0f}" if p >= 1e-6
            else "less than 1 in a million")


def _beside(x: float, bar: float) -> str:
    """``x`` to 3 significant digits, more where those read as the bar: a p95 of 0.0042 s over a
    0.003 s bar printed to 2 decimals read "0.00 s is over the 0.003 s bar"; now "0.00420 s"."""
    for digits in range(3, 10):
        # '#' keeps the trailing zeros of the digits asked for (4.90); no exponent past them (1234 s).
        shown = f"{x:.0f}" if abs(x) >= 10 ** digits else f"{x:#.{digits}g}".rstrip(".")
        if x == bar or float(shown) != float(f"{bar:#.{digits}g}"):
            return shown
    return shown


def _more_data(rows: list[dict[str, Any]]) -> str:
    parts = []
    kept, rest = largest([r["slice"] for r in rows], {r["slice"]: r["n"] for r in rows})
    shown = set(kept)
    for r in (r for r in rows if r["slice"] in shown):
        if r["verdict"] == "too small":
            parts.append(f"{r['slice']} ({r['n_judged']} of the {r['settle_n']} examples needed to judge)")
        elif r.get("settle_n"):
            parts.append(f"{r['slice']} (about {r['settle_n']} test examples)")
        else:
            parts.append(f"{r['slice']} (on the bar)")
    parts += [_others(rest)] if rest else []
    return _names(parts) + (" needs more test data to be judged on its own" if len(parts) == 1
                            else " need more test data to be judged on their own")


def _todo(by: dict[str, list[dict[str, Any]]]) -> str:
    """Under GO: which slices switch now, which stay on the teacher, which need more data."""
    unsettled = by["inconclusive"] + by["too small"]
    if not unsettled and not by["fail"]:
        return "switch all traffic now" + (", every slice passes on its own" if by["pass"] else "")
    if by["pass"]:
        todo = [f"switch {_capped(by['pass'])} now"]
    else:
        todo = ["switch the traffic as a whole now, as no slice passes on its own yet"]
    if by["fail"]:
        todo.append(f"keep {_capped(by['fail'])} on the teacher")
    if unsettled:
        todo.append(_more_data(unsettled))
    return "; ".join(todo)


def verdict(models: dict[str, dict[str, Any]], bar: QualityBar, slices: list[dict[str, Any]],
            be: dict[str, Any]) -> dict[str, Any]:
    """GO / NO-GO / INCONCLUSIVE for the trained student, and one sentence saying what to do with each slice.

    Money and time first (per-call costs on the break-even's basis, ``be['cost_basis']``): a student
    dearer per call than the teacher, slower to repay distilling
    than the horizon, or over the latency bar is NO-GO whatever its quality; a p95 from too few timed calls
    to pass the latency bar makes a passing student INCONCLUSIVE, not GO, unless so many of them are over
    the bar that a p95 within it is implausible: then NO-GO. Then quality on the
    whole test set (the ``all`` row of ``slices``, judged by its 95% interval as every slice is):
    pass is GO, fail is NO-GO, straddling the bar is INCONCLUSIVE. Under GO, slices that pass on
    their own switch now, slices that fail stay on the teacher, and the rest need more data.
    """
    s, t = models["student"], models["teacher"]
    # The per-call costs behind the headline break-even (evaluate.cost_basis: the student at batch 1 or
    # batched), so that "cheaper per call" and the months to repay are one sum; batch 1 where be has none.
    lat = s.get("latency_batch1", {})
    econ = economics(be.get("teacher_cost_per_call_usd", t["cost_per_1k_calls_usd"] / 1000),
                     be.get("student_cost_per_call_usd", s["cost_per_1k_calls_usd"] / 1000), be,
                     lat.get("p95_s"), bar, lat.get("n"),
                     None if bar.max_p95_latency_s is None else slow_calls(lat, bar.max_p95_latency_s))
    whole, rest = slices[0], slices[1:]
    if whole["slice"] != "all":
        raise ValueError("verdict: the first slice row must be 'all' (the whole test split), as slice_table writes it")
    by = {k: [r for r in rest if r["verdict"] == k] for k in ("pass", "fail", "inconclusive", "too small")}
    quality = {"check": "quality on the whole test set (95% interval vs the bar)", "value": whole["reason"],
               "pass": whole["verdict"] == "pass", "result": whole["verdict"]}
    checks = [quality, *econ]
    out = {"checks": checks, **{f"{k.replace(' ', '_')}_slices": [r["slice"] for r in v] for k, v in by.items()}}
    money = [c["why"] for c in econ if c["result"] == "fail"]
    unsure = [c["why"] for c in econ if c["result"] == "inconclusive"]
    if money:
        reason = _names(money) + ", so switching loses money or time whatever its quality: keep every slice on the teacher"
        return {"go": False, "decision": "NO-GO", "reason": reason, **out}
    cheaper = econ[0]["value"].split(" (")[0]  # "5.3x cheaper"
    repays = next(((", repays distilling " + ("in " if c["value"][0].isdigit() else "") + c["value"]) for c in econ
                   if c["check"].startswith("break-even")), "")
    fast = next((f", answers within the {bar.max_p95_latency_s:g} s latency bar" for c in econ
                 if c["check"].startswith("student p95") and c["pass"]), "")
    if whole["verdict"] == "fail":
        reason = (f"although the student is {cheaper} per call, on the whole test set its {whole['statement']}: "
                  "keep every slice on the teacher")
        return {"go": False, "decision": "NO-GO", "reason": reason, **out}
    if whole["verdict"] != "pass":
        reason = (f"the student is {cheaper} per call, but on the whole test set its {whole['statement']}"
                  + "".join(f"; and {u}" for u in unsure) + ": keep every slice on the teacher until more test data "
                  "settles it")
        return {"go": False, "decision": "INCONCLUSIVE", "reason": reason, **out}
    if unsure:
        reason = (f"the student is {cheaper} per call{repays} and on the whole test set its {whole['statement']}, but "
                  + _names(unsure) + ": keep every slice on the teacher until more timed calls settle it")
        return {"go": False, "decision": "INCONCLUSIVE", "reason": reason, **out}
    reason = f"the student is {cheaper} per call{repays}{fast} and on the whole test set its {whole['statement']}: "
    return {"go": True, "decision": "GO", "reason": reason + _todo(by), **out}


def break_even(teacher_cost_per_call: float, student_cost_per_call: float, one_time_usd: float,
               monthly_calls: int) -> dict[str, Any]:
    """Calls (and months at the configured volume) until the student's savings repay distilling."""
    saving = teacher_cost_per_call - student_cost_per_call
    if saving <= 0:
        return {"saving_per_call_usd": saving, "one_time_usd": one_time_usd, "calls": None, "months": None,
                "monthly_calls": monthly_calls,
                "note": "the student is not cheaper per call, so it never breaks even"}
    calls = one_time_usd / saving
    # Nothing to repay (a $0 teacher and training) is repaid at once, at any volume, 0 a month included.
    months = 0.0 if calls <= 0 else calls / monthly_calls if monthly_calls else None
    return {"saving_per_call_usd": saving, "one_time_usd": one_time_usd, "calls": calls, "monthly_calls": monthly_calls,
            "months": months}


def break_even_curve(teacher_cost_per_call: float, student_cost_per_call: float, one_time_usd: float,
                     monthly_calls: int, months: float | None, points: int = 25) -> dict[str, Any]:
    """Cumulative spend of staying on the teacher vs switching, month by month (the break-even plot).

    The horizon is twice the break-even month (so the crossing sits mid-plot), else 12 months.
    """
    horizon = 2 * months if months and months > 0 else 12.0
    xs = [horizon * i / (points - 1) for i in range(points)]
    return {"months": xs, "teacher_usd": [x * monthly_calls * teacher_cost_per_call for x in xs],
            "student_usd": [one_time_usd + x * monthly_calls * student_cost_per_call for x in xs]}
