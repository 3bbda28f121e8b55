"""Champion vs challenger: per-example agreement, bootstrap intervals, and the promotion rule.

Both students answer the same inputs; each example scores 1 when a student agrees with the
teacher's answer (and, where the input has gold, with gold). Free text scores chrF against it
instead (``measure``): a summary or a rewrite almost never matches the teacher's word for word,
so exact match left both students near 0 and the gain to the few that did. The gain is the paired
difference challenger minus champion, resampled per example (``evaluate.bootstrap.bootstrap_gap``),
so the interval keeps the correlation between the two students' mistakes.
"""

from __future__ import annotations

from typing import Any

from potstill.config import RedistillConfig
from potstill.evaluate.bootstrap import bootstrap_gap, bootstrap_mean
from potstill.evaluate.metrics import chrf
from potstill.records import Record
from potstill.tasks import Task


def measure(task: Task) -> str:
    """What each example scores: ``chrF`` for free text, else ``agreement`` (``Task.agree``)."""
    return "chrF" if task.name == "freetext" else "agreement"


def scores(task: Task, parsed: list[Any], records: list[Record]) -> dict[str, list[float]]:
    """Per-example agreement (free text: chrF) with the teacher, and with gold on the records that carry it."""
    score = (lambda a, b: chrf(str(a or ""), str(b or ""))) if measure(task) == "chrF" else task.agree
    out = {"teacher": [score(p, task.parse(r.output or "")) for p, r in zip(parsed, records)]}
    gold = [(p, task.gold(r)) for p, r in zip(parsed, records)]
    if any(g is not None for _, g in gold):
        out["gold"] = [score(p, g) for p, g in gold if g is not None]
    return out


def compare(champion: dict[str, list[float]], challenger: dict[str, list[float]], n_boot: int,
            seed: int, measured: str = "agreement") -> dict[str, Any]:
    """{metric: {champion, challenger, gain, measure}} each with a 95% bootstrap interval."""
    out = {}
    for metric in champion:
        a, b = challenger[metric], champion[metric]
        out[metric] = {"champion": bootstrap_mean(b, n_boot, seed=seed), "challenger": bootstrap_mean(a, n_boot, seed=seed),
                       "gain": bootstrap_gap(a, b, n_boot, seed=seed), "measure": measured}
    return out


def frozen_origin(records: list[dict[str, Any]], champion: str, frozen: dict[str, Any], key: str) -> dict[str, Any]:
    """The frozen-test score the champion's lineage started from: what the decision record that
    promoted ``champion`` (a path relative to the run) names as its origin, where it was measured on the
    same frozen records (``key``, a digest of RUN/test.jsonl, and the same n); else the champion's own
    score in ``frozen`` (a student no redistill promoted is its lineage's start).

    Against the current champion alone each promotion could lose up to ``max_frozen_drop`` again, and
    a cron loop lost it round after round: 0.870 to 0.825 median in 10 rounds of no real gain."""
    own = frozen["teacher"]["champion"]
    for rec in reversed(records):
        promotion, origin = rec.get("promotion"), rec.get("frozen_origin")
        if (isinstance(promotion, dict) and promotion.get("current") == champion and isinstance(origin, dict)
                and origin.get("frozen_test") == key and origin.get("n") == own["n"]
                and isinstance(origin.get("value"), (int, float))):
            return {**origin, "measured_in": origin.get("measured_in") or rec.get("id")}
    # measured_in None: this round (the decision record's id, once written).
    return {"student": champion, "value": own["value"], "n": own["n"], "frozen_test": key, "measured_in": None}


def decide(new: dict[str, Any], frozen: dict[str, Any], rc: RedistillConfig,
           same_student: bool = False, origin: dict[str, Any] | None = None) -> dict[str, Any]:
    """Promote only if the challenger wins on a new-traffic test of ``redistill.min_new_test``
    examples or more (by default the gain's 95% interval lies above 0) and holds on the frozen test,
    against the champion and against ``origin`` (``frozen_origin``), where another student started
    the champion's lineage."""
    gain, drop = new["teacher"]["gain"], -frozen["teacher"]["gain"]["value"]
    what = new["teacher"].get("measure", "agreement")
    n = int(new["teacher"]["champion"]["n"])
    # With min_gain 0 and no significance required, a test of 2 examples that the challenger gets
    # right and the champion wrong is a +100% gain: too few answers to replace a served student on.
    checks = [{"check": f"new-traffic test of at least {rc.min_new_test} examples", "value": n,
               "pass": n >= rc.min_new_test},
              {"check": f"new-traffic {what} gain > {rc.min_gain:g}", "value": gain["value"],
               "pass": gain["value"] > rc.min_gain + 1e-12}]
    if rc.require_significant:
        checks.append({"check": "95% interval of that gain above 0", "value": gain["lo"], "pass": gain["lo"] > 0})
    checks.append({"check": f"frozen-test {what} drop <= {rc.max_frozen_drop:g}", "value": drop,
                   "pass": drop <= rc.max_frozen_drop + 1e-12})
    lost = None  # the drop from the lineage's first champion, where another student started it
    if origin is not None and origin.get("measured_in") is not None:
        lost = origin["value"] - frozen["teacher"]["challenger"]["value"]
        checks.append({"check": f"frozen-test {what} drop from the lineage's first champion {origin['student']} "
                                f"({origin['value']:.3f}) <= {rc.max_frozen_drop:g}", "value": lost,
                       "pass": lost <= rc.max_frozen_drop + 1e-12})
    if same_student:
        checks.append({"check": "challenger differs from the champion", "value": False, "pass": False})
    wins = all(c["pass"] for c in checks)
    failed = [c for c in checks if not c["pass"]]
    if wins:
        reason = (f"challenger wins on new traffic ({gain['value']:+.3f}, 95% CI [{gain['lo']:+.3f}, {gain['hi']:+.3f}]) "
                  f"and changes frozen-test {what} by {-drop:+.3f}"
                  + (f" ({-lost:+.3f} from the lineage's first champion {origin['student']})" if lost is not None else "")
                  + f" (a drop of up to {rc.max_frozen_drop:g} allowed)")
    else:
        reason = "; ".join(f"fails: {c['check']} (got {c['value']:+.3f})" if isinstance(c["value"], float)
                           else f"fails: {c['check']}" for c in failed if c is not checks[0])
        if not checks[0]["pass"]:
            reason = "; ".join(filter(None, [f"new-traffic test too small (n={n} < redistill.min_new_test "
                                             f"{rc.min_new_test}): serve more traffic or raise redistill.new_test",
                                             reason]))
    promote = wins and rc.promote
    if wins and not rc.promote:
        reason += "; not promoted: redistill.promote is false"
    return {"promote": promote, "challenger_wins": wins, "checks": checks, "reason": reason}
