"""report.html: one self-contained page (inline CSS and SVG, no script, no network) from eval.json.

Sections, in the order a reader decides: verdict, three-way table, per-slice gap, task metrics,
confusion matrix, calibration, latency and cost, break-even, worst cases, champion vs challenger,
and where every number comes from.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

from potstill.errors import PotstillError
from potstill.evaluate.page_text import escape
from potstill.records import write_text
from potstill.evaluate import MIN_P95_SAMPLES, MOST_NAMED, cost_words, largest, months_text
from potstill.evaluate.plots import BLUE, GREEN, GREY, RED, interval_plot, isolated, line_plot, reliability_plot

AMBER = "#ca8a04"  # inconclusive: the interval straddles the bar

CSS = """
body{font-family:system-ui,sans-serif;margin:24px auto;padding:0 12px;max-width:1100px;color:#111827;line-height:1.4;overflow-wrap:break-word}
.scroll{overflow-x:auto;max-width:100%}svg{max-width:100%;height:auto}
h1{font-size:22px}h2{font-size:18px;margin-top:32px;border-bottom:1px solid #e5e7eb;padding-bottom:4px}
table{border-collapse:collapse;margin:8px 0;font-size:13px}th,td{border:1px solid #e5e7eb;padding:4px 8px;text-align:right;vertical-align:top}
th{background:#f9fafb}td.l,th.l,td.s{text-align:left}.legend{font-size:12px;color:#374151;margin:0 0 8px}.src{color:#6b7280;font-size:12px;margin:4px 0 0}
.go{background:#dcfce7;border:1px solid #16a34a}.nogo{background:#fee2e2;border:1px solid #dc2626}
.unsure{background:#fef9c3;border:1px solid #ca8a04}
.verdict{padding:12px 16px;border-radius:6px}.small{color:#6b7280}.mono{font-family:monospace;white-space:pre-wrap;max-width:320px}
"""


def _pct(x: Any) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _secs(x: float | None) -> str:
    """Seconds, or '-' where not measured (a teacher answered only through a provider batch API)."""
    return "-" if x is None else f"{_num(x)} s"


def _num(x: Any, digits: int = 3) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}f}" if abs(x) < 1e4 else f"{x:,.0f}"
    return escape(str(x))


def _name(x: Any) -> str:
    """A name the user gave (a slice, a label, a model, a record id), escaped and isolated (``<bdi>``):
    its right-to-left override reversed the text after it ('tag:x\u202eevil, ...' read 'tag:x.live')."""
    return f"<bdi>{escape(str(x))}</bdi>"


def _usd(x: Any) -> str:
    if x is None:
        return "-"
    if abs(x) >= 1 or x == 0:
        return f"${x:,.2f}"
    return f"${x:.{2 - math.floor(math.log10(abs(x))) }f}"  # three significant digits: $0.0000321


def _ci(d: dict | None) -> str:
    if not d or d.get("value") is None:
        return "-"
    # hi None beside a value: no upper bound (a gold ratio whose teacher scored 0 in many resamples).
    return f"{_pct(d['value'])} <span class='small'>[{_pct(d['lo'])}, {'∞' if d['hi'] is None else _pct(d['hi'])}]</span>"


def _ci_pt(d: dict | None) -> str:
    """A difference of shares in percentage points, with its interval."""
    if not d or d.get("value") is None:
        return "-"
    pt = lambda x: f"{100 * x:+.1f} pt"  # noqa: E731
    return f"{pt(d['value'])} <span class='small'>[{pt(d['lo'])}, {pt(d['hi'])}]</span>"


def _src(text: str) -> str:
    return f"<p class='src'><b>Where these numbers come from:</b> {escape(text)}</p>"


def _table(head: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1) -> str:
    """A table whose first ``left`` columns, and any 'source'/'why' column, are left-aligned text."""
    text_cols = {i for i, h in enumerate(head) if i < left or h in ("source", "why", "slices")}
    th = "".join(f"<th class='{'l' if i in text_cols else ''}'>{escape(h)}</th>" for i, h in enumerate(head))
    body = "".join("<tr>" + "".join(f"<td class='{'l' if i in text_cols else ''}'>{c}</td>" for i, c in enumerate(r))
                   + "</tr>" for r in rows)
    # Wider than a phone's screen, a table scrolls sideways in its own box, not the whole page.
    return f"<div class='scroll'><table><tr>{th}</tr>{body}</table></div>"


def _decision(v: dict) -> str:
    """GO / NO-GO / INCONCLUSIVE; an eval.json written before INCONCLUSIVE existed has only ``go``."""
    return v.get("decision") or ("GO" if v["go"] else "NO-GO")


def _verdict(ev: dict) -> str:
    v = ev["verdict"]
    checks = _table(["check", "value", "result"], [
        [escape(c["check"]), _pct(c["value"]) if isinstance(c["value"], float) else escape(str(c["value"])),
         "pass" if c["pass"] else f"<b>{escape(c.get('result', 'fail'))}</b>"] for c in v["checks"]])
    groups = [("Pass on their own (switch now)", "pass_slices"), ("Fail (keep on the teacher)", "fail_slices"),
              ("Inconclusive (need more test data)", "inconclusive_slices"),
              (f"Too small to judge (&lt; {ev['min_slice_n']} examples)", "too_small_slices")]
    sizes = {r["slice"]: r["n"] for r in ev["slices"]}
    lists = "<br>".join(f"{label}: {_listed(v.get(key, []), sizes)}." for label, key in groups)
    qb = ev["quality_bar"]
    months, p95 = qb.get("max_break_even_months"), qb.get("max_p95_latency_s")
    rel = qb.get("min_relative_quality")
    bar = (f"the student's gold metric >= {rel} of the teacher's where gold exists, else agreement >= "
           f"{qb['min_agreement']}" if rel is not None else
           f"agreement with the teacher >= {qb['min_agreement']} (gold is reported, not judged: "
           "min_relative_quality is unset)")
    if any(r.get("judged_on") == "judge" for r in ev["slices"]):
        bar += f"; on free text without gold, the judge's score >= {qb.get('min_judge_score')} in place of agreement"
    rules = (f"a slice passes when its 95% interval lies wholly at or above the bar, fails when wholly below, and is "
             f"inconclusive otherwise; the bar is {bar}; GO also needs the student cheaper "
             "per call" + (f", break-even within {months:g} months" if months is not None else "")
             + (f" and p95 latency <= {p95:g} s" if p95 is not None else ""))
    cls = {"GO": "go", "NO-GO": "nogo"}.get(_decision(v), "unsure")
    return (f"<section id='verdict'><h2>Verdict</h2><div class='verdict {cls}'>"
            f"<b>{_decision(v)}</b>: {escape(v['reason'])}.<br>{lists}</div>{checks}"
            + _src(f"{rules}; from {ev['sources']['quality_bar']}.") + "</section>")


def _listed(names: list[str], sizes: dict[str, int]) -> str:
    """A verdict list's names, at most MOST_NAMED of them (the largest slices), the rest counted."""
    kept, rest = largest(names, sizes)
    return (", ".join(map(_name, kept)) or "none") + (f" and {rest} more (the {MOST_NAMED} largest named; the per-slice "
                                                 "table lists every one)" if rest else "")


def _models(ev: dict) -> str:
    rows = []
    # Free text: exact agreement is near 0 for any model but the teacher; chrF shows how close each came,
    # as the terminal's table does.
    text = any("chrf_with_teacher" in m for m in ev["models"].values())
    for name, m in ev["models"].items():
        ci = ev["agreement_ci"].get(name)
        lat = m.get("latency_batch1", {})
        src = ev["sources"]["teacher"] if name == "teacher" else ev["sources"]["student"]
        chrf = [_num(m.get("chrf_with_teacher"))] if text else []
        rows.append([escape(name), _name(m.get("model") or "-"), _pct(m.get("gold_metric")),
                     _ci(ci) if ci else _pct(m.get("agreement_with_teacher")), *chrf, _secs(lat.get("p50_s")),
                     _usd(m.get("cost_per_1k_calls_usd")), f"<span class='small'>{escape(src)}</span>"])
    return ("<section id='models'><h2>Untrained student, teacher, trained student</h2>"
            + _table(["", "model", "gold metric", "agreement with teacher [95% CI]",
                      *(["chrF with teacher"] if text else []), "p50 latency", "$ per 1k calls", "source"], rows, left=2)
            + _src(f"{ev['n_test']} held-out test inputs"
                   + (f" ({ev['n_too_long']} more, longer than the student's context, left out: served, the teacher "
                      "answers them, reason too_long)" if ev.get("n_too_long") else "")
                   + f". Gold metric: task agreement with {ev['sources']['gold']}. "
                   f"Agreement: task agreement with the teacher's recorded answer. Intervals: {ev['sources']['intervals']}."
                   + _cut(ev))
            + "</section>")


def _cut(ev: dict) -> str:
    """The share of each student's generated answers cut at the task's budget, where any was."""
    cut = {k: m["cut_at_budget"] for k, m in ev["models"].items() if m.get("cut_at_budget")}
    if not cut:
        return ""
    return (" Cut at the token budget (answers that ran to task.max_output_tokens without ending; served, the "
            "trained student's go to the teacher): " + ", ".join(f"{escape(k)} {_pct(v)}" for k, v in cut.items()) + ".")


def _slices(ev: dict) -> str:
    colour = {"pass": GREEN, "fail": RED, "inconclusive": AMBER, "too small": GREY}
    bar = ev["quality_bar"]["min_agreement"]
    agr = interval_plot([{"label": f"{isolated(r['slice'])} (n={r['n']})", "value": r["agreement"]["value"],
                          "lo": r["agreement"]["lo"], "hi": r["agreement"]["hi"], "color": colour.get(r["verdict"], GREY) if r.get("judged_on", "agreement") == "agreement" else BLUE,
                          "ghost": (r.get("untrained_agreement") or {}).get("value")} for r in ev["slices"]
                         if r["agreement"]["value"] is not None],  # a field neither model writes: n/a, no point
                        0.0, 1.0, ref=bar, ref_label=f"bar {bar:.0%}", xlabel="trained student's agreement with the teacher")
    gold_rows = [r for r in ev["slices"] if isinstance((r.get("gold") or {}).get("relative"), dict)
                 and r["gold"]["relative"].get("value") is not None]
    gap = ""
    if gold_rows:
        # Without min_relative_quality the ratio is reported, not judged: no bar line to draw.
        rel_bar = ev["quality_bar"].get("min_relative_quality")
        lo = min([0.5] + [r["gold"]["relative"]["lo"] for r in gold_rows])
        hi = max([1.5] + [r["gold"]["relative"]["hi"] for r in gold_rows if r["gold"]["relative"]["hi"] is not None])
        # No upper bound: the whisker runs to the plot's right edge.
        gap = interval_plot([{"label": f"{isolated(r['slice'])} (n={r['gold']['n']})", "value": r["gold"]["relative"]["value"],
                              "lo": r["gold"]["relative"]["lo"], "hi": hi if r["gold"]["relative"]["hi"] is None else r["gold"]["relative"]["hi"],
                              "color": colour.get(r["verdict"], GREY) if r.get("judged_on") == "gold" else BLUE}
                             for r in gold_rows],
                            lo, hi, ref=rel_bar, ref_label="" if rel_bar is None else f"bar {rel_bar:.0%}",
                            xlabel="trained student's gold metric / the teacher's (paired 95% CI)")
    rows = [[_name(r["slice"]), str(r["n"]), _ci(r["agreement"]), _ci(r.get("untrained_agreement")),
             _pct(r["gold"]["student"]) if r.get("gold") else "-", _pct(r["gold"]["teacher"]) if r.get("gold") else "-",
             _ci_pt(r["gold"]["gap"]) if r.get("gold") else "-",
             _ci((r.get("gold") or {}).get("relative")) if isinstance((r.get("gold") or {}).get("relative"), dict) else "-",
             f"<b>{escape(r['verdict'])}</b>", f"<span class='small'>{escape(r['reason'])}</span>"] for r in ev["slices"]]
    a, b = ev["length_edges_words"]
    legend = ("<p class='legend'>Dot: the trained student, with its 95% interval; hollow circle: the untrained "
              "student. Green: pass; red: fail; amber: inconclusive (the interval straddles the bar); grey: too small "
              "to judge; blue: agreement reported only, because gold labels judge that slice (second plot) or, on free "
              "text, the judge does (its section).</p>")
    return ("<section id='slices'><h2>Per-slice gap</h2>" + legend + agr + gap
            + _table(["slice", "n", "agreement [95% CI]", "untrained [95% CI]", "student gold", "teacher gold",
                      "gap [95% CI]", "student / teacher gold [95% CI]", "verdict", "why"], rows)
            + _src(f"slices are record tags (tag:), labels (label: the gold label, else the teacher's; classification), "
                   f"input-length terciles (cut at {a} and {b} words) and, for JSON outputs, one row per field (field: "
                   f"the share of examples where that field equals the teacher's). Agreement per example is measured "
                   f"by this command against the "
                   f"teacher's recorded answer; intervals: {ev['sources']['intervals']}; the gap resamples paired "
                   f"per-example differences.") + "</section>")


def _metrics(ev: dict) -> str:
    rows = []
    for name, m in ev["metrics"].items():
        for ref, vals in m.items():
            for k, val in vals.items():
                if k in ("confusion", "calibration", "n"):
                    continue
                rows.append([escape(name), escape(ref.replace("vs_", "vs ")), escape(k), _num(val),
                             str(vals.get("n", "-"))])
    return ("<section id='metrics'><h2>Task metrics</h2>" + _table(["model", "against", "metric", "value", "n"], rows, 3)
            + _src(f"computed by this command from each model's answers on the test split ({ev['task']} task); "
                   "references are the teacher's recorded answers and, where present, the gold labels/references.")
            + "</section>")


def _confusion(ev: dict) -> str:
    m = ev["metrics"].get("student", {}).get("vs_teacher", {})
    cm = m.get("confusion")
    if not cm:
        return ("<section id='confusion'><h2>Confusion matrix</h2><p>Not applicable: the task is "
                f"{escape(ev['task'])}, not classification.</p></section>")
    cm, shown = _top_labels(cm)
    peak = max((c for row in cm["counts"] for c in row), default=1) or 1
    head = "<tr><th class='l'>teacher \\ student</th>" + "".join(f"<th>{_name(c)}</th>" for c in cm["cols"]) + "</tr>"
    body = ""
    for label, row in zip(cm["rows"], cm["counts"]):
        body += f"<tr><th class='l'>{_name(label)}</th>" + "".join(
            f"<td style='background:rgba(37,99,235,{0.85 * c / peak:.2f});color:{'white' if c / peak > 0.5 else 'inherit'}'>"
            f"{c}</td>" for c in row) + "</tr>"
    return (f"<section id='confusion'><h2>Confusion matrix</h2><div class='scroll'><table>{head}{body}</table></div>"
            + _src("rows: the teacher's recorded label; columns: the trained student's answer, measured by this command "
                   f"on the {m.get('n')} test inputs.{shown}") + "</section>")


MOST_LABELS, OTHERS = 20, "(others)"  # 200 labels made a 200 x 200 table, 23,826 px tall


def _top_labels(cm: dict) -> tuple[dict, str]:
    """The confusion matrix of the MOST_LABELS most frequent labels (the teacher's count plus the student's),
    most frequent first, the rest summed in one OTHERS row and column; and a sentence saying so."""
    rows, cols, counts = cm["rows"], cm["cols"], cm["counts"]
    if len(rows) <= MOST_LABELS:
        return cm, ""
    freq = {lab: sum(r) for lab, r in zip(rows, counts)}
    for j, c in enumerate(cols):
        freq[c] = freq.get(c, 0) + sum(r[j] for r in counts)
    keep = sorted(rows, key=lambda lab: -freq[lab])[:MOST_LABELS]
    new_cols = keep + [OTHERS] + [c for c in cols if c not in rows]  # (invalid) stays apart
    where = {c: new_cols.index(c if c in keep or c not in rows else OTHERS) for c in cols}
    out = [[0] * len(new_cols) for _ in range(len(keep) + 1)]
    at = {lab: i for i, lab in enumerate(keep)}
    for lab, r in zip(rows, counts):
        for c, k in zip(cols, r):
            out[at.get(lab, len(keep))][where[c]] += k
    return ({"rows": keep + [OTHERS], "cols": new_cols, "counts": out},
            f" The {MOST_LABELS} most frequent of the {len(rows)} labels (the teacher's count plus the student's), "
            f"most frequent first; the other {len(rows) - MOST_LABELS} are summed in {OTHERS}.")


def _calibration(ev: dict) -> str:
    cal = ev["metrics"].get("student", {}).get("vs_teacher", {}).get("calibration")
    if not cal or not cal.get("n"):
        return "<section id='calibration'><h2>Calibration</h2><p>Not applicable for this task.</p></section>"
    return (f"<section id='calibration'><h2>Calibration</h2><p>Expected calibration error (ECE) of the trained student "
            f"against the teacher: <b>{_pct(cal['ece'])}</b></p>" + reliability_plot(cal["bins"])
            + _src("the student's top label probability, measured by this command, binned in tenths; accuracy is "
                   "agreement with the teacher's label; ECE = sum over bins of (share of examples) x |accuracy - confidence|.")
            + "</section>")


def _cost(ev: dict) -> str:
    rows = [[escape(r["model"]), _secs(r.get("p50_s")), _p95(r.get("p95_s"), r.get("latency_n")),
             f"{_num(r.get('batched_p50_s'))} s" if r.get("batched_p50_s") is not None else "-",
             _p95(r.get("batched_p95_s"), r.get("batched_n"), "batches"),
             _num(r.get("calls_per_s"), 1), _usd(r["usd_per_call"]), _usd(r["usd_per_1k_calls"]),
             f"<span class='small'>{escape(r['source'])}</span>"] for r in ev["latency_cost"]]
    o = ev["one_time"]
    one = _table(["one-time cost of distilling", "value", "source"], [
        ["teacher generation", _usd(o["generation_usd"]), escape(ev["sources"]["generation_usd"])],
        ["training", f"{_usd(o['train_usd'])} ({o['train_s'] / 3600:.3f} h)", escape(ev["sources"]["train_usd"])],
        ["total", _usd(o["total_usd"]), "sum of the two rows above"]])
    bs = next((r.get("batch_size") for r in ev["latency_cost"] if r.get("batch_size")), "-")
    return ("<section id='cost'><h2>Latency and cost</h2>"
            + _table(["model", "p50 (batch 1)", "p95 (batch 1)", f"p50 (batch {bs})", f"p95 (batch {bs})", "calls/s batched",
                      "$ per call", "$ per 1k calls", "source"], rows) + one
            + _src("teacher row: as its source column says (an API teacher's from the ledger; a local teacher timed "
                   "here in turns with the student); student rows: timed by this command on this machine; a timed "
                   "model's dollars are its measured seconds per call times its configured hourly price.") + "</section>")


def _p95(x: float | None, n: int | None, of: str = "calls") -> str:
    """A p95 with the number of timings it came from; under MIN_P95_SAMPLES, said to be too few."""
    if x is None:
        return "-"
    if n is None:  # an eval.json from before latency_n
        return _secs(x)
    few = f", too few for a p95 (the verdict's latency check needs {MIN_P95_SAMPLES} to pass)" if n < MIN_P95_SAMPLES else ""
    return f"{_secs(x)} <span class='small'>({n} {of}{few})</span>"


def _basis_name(basis: str, batch_size: Any = None) -> str:
    return "one call at a time (batch 1)" if basis == "batch1" else f"serving in batches of {batch_size or '-'}"


def _batched_from(ev: dict) -> str:
    """Where the student's batched cost came from: with a local teacher, the batches timed in turns
    with the teacher's calls (``batched_in_turns``), else the throughput pass over the test split."""
    t = ev["models"]["student"].get("batched_in_turns")
    return (f"{t['n']} batches timed in turns with the teacher's calls" if t
            else "the throughput pass over the test split")


def _student_costs(b: dict, share: float, escalated: float = 0.0) -> str:
    """What the student costs per call on one basis (``b``); with inputs longer than its context
    (``share`` of them, which serve sends to the teacher) or answers serve escalates (``escalated`` of
    those it reads), a served call's cost, the student's own beside it."""
    if not share and not escalated:
        return f", the student costs {_usd(b['student_cost_per_call_usd'])} per call"
    paid = ([f"the {100 * share:.1f}% longer than its context"] if share else []) + (
        [f"the {100 * escalated:.1f}% of its answers serve escalates, on top of its own"] if escalated else [])
    return (f", a call served after the switch costs {_usd(b['student_cost_per_call_usd'])} (the student's "
            f"{_usd(b['student_alone_cost_per_call_usd'])} on the inputs it reads, the teacher's on "
            + " and ".join(paid) + ")")


def _break_even(ev: dict) -> str:
    be = ev["break_even"]
    share, escalated = be.get("too_long_share") or 0.0, be.get("escalated_share") or 0.0
    c = be["curve"]
    plot = line_plot([("stay on the teacher", c["months"], c["teacher_usd"], RED),
                      ("distil + student", c["months"], c["student_usd"], BLUE)],
                     "months at the configured volume", "cumulative $", be.get("months"), "break-even")
    # The headline is on evaluate.cost_basis; the other basis follows it, so that the page gives both
    # (batched: the throughput pass, a busy endpoint; batch 1: interactive calls).
    basis = be.get("cost_basis", "batch1")
    other = "batched" if basis == "batch1" else "batch1"
    b = be.get("batched") or {}
    head = (f"{_basis_name(basis, b.get('batch_size')).capitalize()} (evaluate.cost_basis {basis}"
            + (f", {_batched_from(ev)})" if basis == "batched" else ")"))
    if be.get("student_cost_per_call_usd") is not None:
        head += _student_costs(be, share, escalated)
    if be.get("calls") == 0:
        text = f"{head}: it saves {_usd(be['saving_per_call_usd'])} per call and distilling cost nothing, so it breaks even at once."
    elif be.get("calls") is not None:
        text = (f"{head}: it saves {_usd(be['saving_per_call_usd'])} per call and repays the one-time "
                f"{_usd(be['one_time_usd'])} after <b>{be['calls']:,.0f} calls</b>"
                + (f", <b>{months_text(be['months'])}</b> at {be['monthly_calls']:,} calls a month." if be.get("months") is not None
                   else "."))
    else:
        text = f"{head}: " + escape(be.get("note", "no break-even")) + "."
    o = be.get(other)
    if o:
        text += (f" {_basis_name(other, b.get('batch_size')).capitalize()}"
                 + (f" ({_batched_from(ev)})" if other == "batched" else "")
                 + _student_costs(o, share, escalated) + ": "
                 + (f"break-even after {o['calls']:,.0f} calls" + (f", {months_text(o['months'])}." if o.get("months") is not None
                                                                  else ".") if o.get("calls") is not None
                    else "it is still not cheaper than the teacher."))
    return (f"<section id='break-even'><h2>Break-even</h2><p>{text}</p>{plot}"
            + _src(f"per-call costs from the latency and cost table; one-time cost from the ledger and train.json; "
                   f"volume from {ev['sources']['monthly_calls']}"
                   + (f"; {ev['sources']['served_call']}" if "served_call" in ev["sources"] else "") + ".") + "</section>")


def _on_both_bases(s: dict, be: dict) -> tuple[str, str]:
    """The student's $ per 1k calls and the break-even months, one call at a time / batched."""
    def months(b: dict | None) -> str:
        if not b:
            return "-"
        return months_text(b["months"]).removesuffix(" months") if b.get("months") is not None else "never"

    def per_1k(b: dict | None, own: float | None) -> str:  # a served call's where eval.json has it
        return _usd(1000 * b["student_cost_per_call_usd"] if b and "student_cost_per_call_usd" in b else own)

    # An older eval.json has no batch1 entry: its headline then is the batch-1 one.
    one = be.get("batch1") or (be if be.get("cost_basis", "batch1") == "batch1" else None)
    batched = be.get("batched") or (be if be.get("cost_basis") == "batched" else None)
    return (f"{per_1k(one, s['cost_per_1k_calls_usd'])} / {per_1k(batched, s.get('cost_per_1k_calls_batched_usd'))}",
            f"{months(one)} / {months(batched)}")


def _worst(ev: dict) -> str:
    def show(x: Any) -> str:
        return escape(x if isinstance(x, str) else json.dumps(x, ensure_ascii=False))

    rows = [[_name(w["id"]), f"<div class='mono'>{escape(w['input'])}</div>", f"<div class='mono'>{show(w['teacher'])}</div>",
             f"<div class='mono'>{show(w['student'])}</div>", show(w["gold"]) if w["gold"] is not None else "-",
             _pct(w["confidence"]), ", ".join(map(_name, w["slices"]))] for w in ev["worst_cases"]]
    # No row is full agreement only when the whole split's mean agreement is 1; report.worst_cases: 0
    # lists none whatever the student did.
    everywhere = (ev["slices"][0].get("agreement") or {}).get("value") == 1.0 if ev.get("slices") else False
    body = (_table(["id", "input", "teacher", "student", "gold", "student confidence", "slices"], rows, 5) if rows
            else "<p>The student agrees with the teacher on every test input.</p>" if everywhere
            else "<p>None listed (report.worst_cases is 0).</p>")
    return ("<section id='worst'><h2>Worst cases: confident disagreements</h2>" + body
            + _src("test inputs where the trained student's answer (measured by this command) differs from the teacher's "
                   "recorded answer, most confident first.") + "</section>")


def _compare(ev: dict, others: Sequence[tuple[str, dict]]) -> str:
    if not others:
        return ""
    runs = [("champion: " + ev.get("run_dir", "this run"), ev)] + [(f"challenger: {n}", o) for n, o in others]
    rows = []
    for name, e in runs:
        s = e["models"]["student"]
        be = e["break_even"]
        rows.append([_name(name), _name(s.get("model")), _pct(s.get("gold_metric")), _ci(e["agreement_ci"].get("student")),
                     _secs(s["latency_batch1"].get("p50_s")), *_on_both_bases(s, be),
                     _decision(e["verdict"]), escape(e.get("created_at", "-"))])
    # Every run's slices, the champion's first: a challenger tested on other tags keeps its own rows.
    names = list(dict.fromkeys(r["slice"] for _, e in runs for r in e["slices"]))
    slice_rows = []
    for sl in names:
        cells = []
        for _, e in runs:
            r = next((x for x in e["slices"] if x["slice"] == sl), None)
            cells.append(_decided_on(r) + f" <b>{escape(r['verdict'])}</b>" if r else "-")
        slice_rows.append([_name(sl), *cells])
    warn = "".join(f"<p><b>Warning:</b> {escape(n)} was evaluated on a different test split; its numbers are not paired "
                   "with the champion's.</p>" for n, o in others if o.get("test_hash") != ev.get("test_hash"))
    return ("<section id='compare'><h2>Champion vs challenger</h2>" + warn
            + _table(["run", "student", "gold metric", "agreement [95% CI]", "p50 latency",
                      "$ per 1k calls (batch 1 / batched)", "break-even months (batch 1 / batched)", "verdict",
                      "evaluated at"], rows, 2)
            + _table(["slice", *[n for n, _ in runs]], slice_rows)
            + _src("each run's own eval.json, as written by its `potstill evaluate` (see the evaluated-at column); a "
                   "slice's cell is the 95% interval its verdict was judged on (the gold ratio, the judge's score or "
                   "agreement with the teacher, README rule 2), then the verdict.")
            + "</section>")


def _decided_on(r: dict) -> str:
    """The measure and 95% interval a slice's verdict was judged on (``judged_on``): beside the verdict,
    agreement's interval read as a pass straddling its bar where the gold ratio had decided."""
    on = r.get("judged_on", "agreement")  # an eval.json from before judged_on: agreement decided
    if on == "gold":
        g = r["gold"]
        if (g.get("relative") or {}).get("value") is None:  # the teacher at 0, the student above it: the gap decides
            return f"gold {_pct(g['student'])} vs the teacher's {_pct(g['teacher'])}, gap " + _ci_pt(g.get("gap"))
        return "gold ratio " + _ci(g["relative"])
    if on == "judge":
        j = r.get("judge_score") or {}
        if not j.get("n"):
            return "judge: no example judged"
        return (f"judge score {_num(j['value'], 2)} <span class='small'>[{_num(j['lo'], 2)}, "
                f"{_num(j['hi'], 2)}]</span>")
    return "agreement " + _ci(r["agreement"])


def _judge(ev: dict) -> str:
    j = ev.get("judge")
    if not j:
        return ""
    rows = [[_name(r["slice"]), str(r["judged"]), _ci(r["win"]), _ci(r["tie"]), _ci(r["loss"]), _ci(r["inconsistent"]),
             str(r["bad"]), _num((r.get("score") or {}).get("value"))] for r in j["slices"]]
    # Where the judge decided a slice (free text without gold), its score against the bar, coloured by verdict.
    colour = {"pass": GREEN, "fail": RED, "inconclusive": AMBER, "too small": GREY}
    # A slice the judge judged none of (n 0: too small) has no point to plot.
    decided = [r for r in ev["slices"] if r.get("judged_on") == "judge" and (r.get("judge_score") or {}).get("n")]
    bar = ev["quality_bar"].get("min_judge_score")
    plot = interval_plot([{"label": f"{isolated(r['slice'])} (n={r['judge_score']['n']})", "value": r["judge_score"]["value"],
                           "lo": r["judge_score"]["lo"], "hi": r["judge_score"]["hi"],
                           "color": colour.get(r["verdict"], GREY)} for r in decided],
                         0.0, 1.0, ref=bar, ref_label=f"bar {bar:.2f}",
                         xlabel="judge score of the trained student against the teacher (0.5: as good)") \
        if decided and bar is not None else ""
    agr = j["agreement_with_metric"]
    means = ", ".join(f"{k} {_num(v)}" for k, v in agr["metric_mean_by_verdict"].items())
    text = (f"<p>Judge {_name(j['model'])} compared the trained student with the teacher on {j['n']} test inputs, "
            f"asked in both orders, at {cost_words(j['cost'], _usd)}. It named position A "
            f"in {_pct(j['first_position_rate'])} of its readable answers (a fair judge: about 50%); "
            f"{j['counts']['inconsistent']} inputs got opposite verdicts in the two orders (inconsistent), "
            f"{j['counts']['bad']} got an unreadable answer (bad), "
            f"{sum(bool(e.get('identical')) for e in j['examples'])} were the teacher's exact answer (a tie, not "
            f"asked). Automatic metric ({escape(str(agr.get('metric', 'agreement')))} against the teacher) by "
            f"verdict: {means}; "
            f"Spearman {_num(agr['spearman'])} over {agr['n']} consistent verdicts. Score: win 1, tie or "
            f"inconsistent 0.5, loss 0 (0.5: as good as the teacher)"
            + ("; on free text without gold it decides each slice's verdict (plot)" if decided else "") + ".</p>")
    return ("<section id='judge'><h2>Teacher as judge: student vs teacher</h2>" + text + plot
            + _table(["slice", "judged", "win", "tie", "loss", "inconsistent", "bad", "score"], rows)
            + _src("the judge's answers, recorded in the ledger (role judge); rates over judged inputs with exact "
                   "(Clopper-Pearson) intervals, the score with a bootstrap one") + "</section>")


def _sources(ev: dict) -> str:
    rows = [[escape(k), escape(v)] for k, v in ev["sources"].items()]
    return ("<section id='sources'><h2>Where every number comes from</h2>" + _table(["number", "source"], rows, 2)
            + "</section>")


def render(ev: dict, others: Sequence[tuple[str, dict]] = ()) -> str:
    title = f"potstill evaluation: {ev['task']}, {ev['n_test']} test inputs"
    body = "".join([_verdict(ev), _models(ev), _slices(ev), _metrics(ev), _confusion(ev), _calibration(ev), _cost(ev),
                    _break_even(ev), _judge(ev), _worst(ev), _compare(ev, others), _sources(ev)])
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'><title>{escape(title)}</title>"
            f"<style>{CSS}</style></head><body><h1>{escape(title)}</h1><p class='small'>run {escape(ev.get('run_dir', ''))}, "
            f"evaluated {escape(ev.get('created_at', ''))}</p>{body}</body></html>")


def write_report(path: str | Path, ev: dict, others: Sequence[tuple[str, dict]] = ()) -> None:
    """Render and write atomically (temp file renamed over the target)."""
    write_text(path, render(ev, others))


def load_eval(path: str | Path) -> dict:
    """An eval.json from a run directory or a file path, with one clear error when it is missing or not ours."""
    p = Path(path)
    if p.is_dir():
        p = p / "eval.json" if (p / "eval.json").exists() else p.parent / "eval.json"
    if not p.exists():
        raise PotstillError(f"{path}: no eval.json there (run `potstill evaluate` on that run first)")
    try:
        ev = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise PotstillError(f"{p}: malformed JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(ev, dict) or "slices" not in ev or "verdict" not in ev:
        raise PotstillError(f"{p}: not an eval.json written by this version of `potstill evaluate` (no slices/verdict)")
    try:  # as champion and as challenger: a key missing or of another type (a hand edit) is named here
        render(ev, [("check", ev)])
    except (KeyError, IndexError, TypeError, AttributeError, ValueError) as e:
        what = f"no {e.args[0]!r} key" if isinstance(e, KeyError) and e.args else f"{type(e).__name__}: {e}"
        raise PotstillError(f"{p}: an eval.json this version of potstill cannot read ({what}); rerun "
                            "`potstill evaluate --force` on that run") from None
    return ev


def compare_report(run_dir: str | Path, others: Sequence[str | Path], out: str | Path | None = None) -> Path:
    """report.html for ``run_dir`` (the champion) with each other run's eval.json as a challenger."""
    ev = load_eval(run_dir)
    loaded = [(str(o), load_eval(o)) for o in others]
    run = Path(run_dir).parent if Path(run_dir).is_file() else Path(run_dir)  # RUN/eval.json: the page beside it
    target = Path(out) if out else run / "report.html"
    if target.is_dir():  # else the rename fails naming its temp file, one the user never made
        raise PotstillError(f"{target} is a directory: name the page's file (for example {target / 'report.html'})")
    write_report(target, ev, loaded)
    return target
