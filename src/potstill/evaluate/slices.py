"""Slices of the test set and the student's gap to the teacher on each, with 95% intervals: exact
(Clopper-Pearson, ``exact.share_interval``) for agreement, a share; percentile bootstrap for the
judge's score and the paired gold gap and ratio (``bootstrap``).

A slice is a record tag (``tag:news``), a label (``label:sports``: the gold label where there is
one, else the teacher's; only for tasks with a label set), an input-length bucket (terciles of
words in the input, ``metrics.words``) or, for a chat that holds earlier tool calls and results (an agent's later
turn), ``turn:after tool results``. Structured outputs get one row per top-level field instead of labels
(``field:date``: how often the student's value of that field equals the teacher's): a slice per
distinct reference object would give one slice per example. Each gets a verdict from its 95%
interval against the bar: pass (wholly at or above), fail (wholly below), inconclusive
(straddling; with the test examples that would settle it), or too small to judge (fewer than
``min_n`` examples).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from potstill.config import QualityBar
from potstill.evaluate.bootstrap import bootstrap_gap, bootstrap_mean, bootstrap_ratio, interval_at
from potstill.evaluate.exact import share_interval
from potstill.evaluate.metrics import words
from potstill.records import Record
from potstill.tasks.extraction import json_same
from potstill.tool_calls import has_tool_turns


def length_edges(records: Sequence[Record]) -> tuple[int, int]:
    """Word counts (``metrics.words``: a Chinese, Japanese or Thai character is one) at the 1/3 and
    2/3 points of the inputs: short <= a < medium <= b < long."""
    counts = sorted(len(words(r.text)) for r in records)
    if not counts:
        return 0, 0
    return counts[(len(counts) - 1) // 3], counts[2 * (len(counts) - 1) // 3]


def slice_names(record: Record, label: Any, edges: tuple[int, int]) -> list[str]:
    """The slices one record falls in; pass ``label=None`` for tasks without a label set."""
    names = [f"tag:{t}" for t in record.slice]
    if label is not None:
        names.append(f"label:{label}")
    w = len(words(record.text))
    a, b = edges
    medium = f"{b} words" if a + 1 == b else f"{a + 1}-{b} words"  # "6 words", not "6-6 words"
    names.append(f"length:short (<={a} words)" if w <= a else
                 f"length:medium ({medium})" if w <= b else f"length:long (>{b} words)")
    if has_tool_turns(record.messages):  # judged apart: a reply to a result is another skill than a first call
        names.append(AFTER_RESULTS)
    return names


AFTER_RESULTS = "turn:after tool results"


def settle_n(ci: dict[str, Any], bar: float, most: int = 10**8) -> int | None:
    """The fewest test examples on which ``ci``'s interval, at the same rate, would no longer straddle
    ``bar`` (None: the estimate is on the bar, or no size does it: an unbounded side, more than ``most``).

    The interval is the verdict's own, recomputed at each size (``interval_at``): exact for a share,
    and for a bootstrap its percentile spread shrinking as 1/sqrt(n) and its exact-bound floor as 1/n.
    The sqrt rule alone, applied to the floor, asked for 1,159 examples where 72 do: 2 examples
    identical to the teacher's have a gold ratio of [15.8%, 184.2%], and the same at 72 examples is
    [95.0%, 105.0%] (q = 0.025^(1/72) = 0.950). Searched by doubling, then halving the gap between
    a size that does not settle it and one that does. At that size the estimate must hold: a
    true rate that is the one measured settles it about half the time."""
    value, n = ci["value"], ci["n"]
    if value == bar or (value < bar and ci["hi"] is None):  # hi None: no upper bound (bootstrap_ratio) to bring down
        return None

    def settled(size: int) -> bool:
        lo, hi = interval_at(ci, size)
        return lo >= bar if value > bar else hi is not None and hi < bar

    short, enough = n, 2 * n
    while not settled(enough):
        if enough > most:
            return None
        short, enough = enough, 2 * enough
    while enough - short > 1:
        mid = (short + enough) // 2
        short, enough = (short, mid) if settled(mid) else (mid, enough)
    return enough


def judge_interval(ci: dict[str, Any], bar: float) -> str:
    """pass: the interval lies at or above the bar; fail: wholly below it; otherwise inconclusive.
    ``hi`` None: no upper bound (a gold ratio whose teacher scored 0 in many resamples), never a fail."""
    if ci["lo"] >= bar:
        return "pass"
    if ci["hi"] is not None and ci["hi"] < bar:
        return "fail"
    return "inconclusive"


WHERE = {"pass": "wholly at or above", "fail": "wholly below", "inconclusive": "straddling"}


def judge(agreement: dict[str, Any], gold: dict[str, Any] | None, bar: QualityBar, min_n: int,
          judged: dict[str, Any] | None = None) -> dict[str, Any]:
    """pass / fail / inconclusive / too small for one slice, with the reason in words.

    Where the slice has gold labels (and ``bar.min_relative_quality`` is set) the student's gold
    metric relative to the teacher's decides, and agreement is only reported: agreeing with a wrong
    teacher is no virtue (a teacher at 0 on gold has no ratio: the paired gap decides, above 0 or not).
    Else, where a judge compared free-text answers (``judged``: the judge
    score's mean and interval, win 1, tie 0.5, loss 0) and ``bar.min_judge_score`` is set, the judge
    decides: exact-match agreement, which a summary or a rewrite almost never reaches, would fail
    any student. Elsewhere agreement with the teacher decides.
    """
    rel = (gold or {}).get("relative") or {}
    # The teacher right on none of the slice's gold examples and the student on some: there is no ratio.
    # The bar x the teacher is 0, so the paired gap (student - teacher) decides, against 0: passed only
    # where its 95% interval lies above 0. "student >= bar x teacher in every resample" passed any student
    # above 0, as a teacher at 0 of 30 resamples to 0 every time: 2 of 30 right beside 0 of 30 was GO,
    # its gap +6.7 pt [-5.7, +17.5]. Agreement, judged instead, failed a student that is right where the
    # teacher is wrong (and kept the slice on the teacher). Both at 0, gold tells the two apart in nothing
    # (free text's exact match to a reference, say): agreement or the judge decides, as where gold is absent.
    beats_zero = (bar.min_relative_quality is not None and gold is not None and rel.get("value") is None
                  and gold.get("teacher") == 0 and (gold.get("student") or 0) > 0)
    if beats_zero:
        on, ci, b, n = "gold", gold["gap"], 0.0, gold["n"]
        what, aside = "", f"; agreement {agreement['value']:.1%}, reported only (gold decides)"
    elif bar.min_relative_quality is not None and rel.get("value") is not None:
        on, ci, b, n = "gold", rel, bar.min_relative_quality, gold["n"]
        what = f"gold metric is {ci['value']:.1%} of the teacher's"
        aside = f"; agreement {agreement['value']:.1%}, reported only (gold decides)"
    elif bar.min_judge_score is not None and judged is not None:
        on, ci, b, n = "judge", judged, bar.min_judge_score, judged["n"]
        what = f"judge score against the teacher is {ci['value']:.2f} (0.5: as good)" if n else ""
        aside = f"; exact-match agreement {agreement['value']:.1%}, reported only (the judge decides)"
        flipped = judged.get("inconsistent")
        if bar.max_judge_inconsistency is not None and flipped is not None and n >= min_n \
                and flipped > bar.max_judge_inconsistency:
            # Each flip scores 0.5, so a judge that mostly names one position scores any student near 0.5.
            statement = (f"the judge's verdict flipped with the answers' order on {flipped:.0%} of its {n} examples, "
                         f"over the {bar.max_judge_inconsistency:.0%} the bar allows, so its score "
                         f"({ci['value']:.2f}) measures its position bias more than the student: a stronger judge "
                         "(evaluate.judge.teacher) can decide")
            return {"judged_on": on, "n_judged": n, "verdict": "inconclusive", "settle_n": None,
                    "statement": statement, "reason": statement + aside}
    else:
        on, ci, b, n = "agreement", agreement, bar.min_agreement, agreement["n"]
        what, aside = f"agreement with the teacher is {ci['value']:.1%}", ""
    row = {"judged_on": on, "n_judged": n}
    if n < min_n:
        none = (" (the judge judged none of them: past evaluate.judge.max_examples, or its answers unreadable)"
                if on == "judge" and not n else "")
        return {**row, "verdict": "too small", "settle_n": min_n,
                "statement": f"{n} examples are fewer than the {min_n} needed to judge{none}",
                "reason": f"too small to judge: {n} examples < {min_n}{none}"}
    if beats_zero:
        return {**row, **_beats_zero(gold, n, aside)}
    v = judge_interval(ci, b)
    statement = (f"{what} [{ci['lo']:.2f}, {ci['hi']:.2f}], {WHERE[v]} the {b:.2f} bar" if on == "judge" else
                 f"{what} [{ci['lo']:.1%}, {'no upper bound' if ci['hi'] is None else format(ci['hi'], '.1%')}], "
                 f"{WHERE[v]} the {b:.0%} bar")
    need = settle_n(ci, b) if v == "inconclusive" else None
    if v == "inconclusive":
        statement += (f"; at the same rate, about {need} test examples ({need - n} more) would settle it" if need else
                      "; the teacher scores 0 in too many resamples for an upper bound: more test examples with "
                      "gold, where the teacher is right, would narrow it" if ci["hi"] is None else
                      "; the estimate sits on the bar, so no number of examples is sure to settle it")
    return {**row, "verdict": v, "settle_n": need, "statement": statement, "reason": statement + aside}


# Pairs won by the student, none by the teacher, that two equally good models give at most 2.5% of the time:
# each such pair is either's with a chance of 1/2, so k of them 0.5^k; 0.5^5.32 = 2.5% (McNemar's exact test).
SIGN_WINS = math.log(0.025) / math.log(0.5)


def _beats_zero(gold: dict[str, Any], n: int, aside: str) -> dict[str, Any]:
    """The verdict where the teacher is right on none of the gold examples and the student on some. It
    passes only where both the paired gap's 95% interval lies above 0 and the exact sign test says two
    equally good models would split the examples this way at most 2.5% of the time: the bootstrap's
    interval alone cleared 0 on 4 of 30 against 0 of 30, which equal models give 6.25% of the time.
    Otherwise inconclusive, never a fail (no example can score below the teacher's 0)."""
    gap = gold["gap"]
    won = round(gold["student"] * n, 9)  # the student's right answers (shares of fields on JSON), all where the teacher is wrong
    chance = 0.5 ** won
    pt = lambda x: f"{100 * x:+.1f} pt"  # noqa: E731
    statement = (f"gold metric is {gold['student']:.1%} where the teacher's is 0.0% (no ratio to take): the student is "
                 f"right on {won:g} examples the teacher gets wrong and the teacher on none, a result two equally good "
                 f"models would give {chance:.1%} of the time (paired gap {pt(gap['value'])} [{pt(gap['lo'])}, {pt(gap['hi'])}])")
    if gap["lo"] > 0 and won >= SIGN_WINS:
        return {"verdict": "pass", "settle_n": None, "statement": statement + ": it beats the teacher",
                "reason": statement + ": it beats the teacher" + aside}
    # At the same rate: SIGN_WINS such examples, and a gap interval above 0 (interval_at, as for any verdict).
    need = max(math.ceil(SIGN_WINS * n / won), settle_n(gap, 0.0) or 0)
    statement += (": these examples do not show that the student beats the teacher; at the same rate, about "
                  f"{need} test examples ({need - n} more) would settle it")
    return {"verdict": "inconclusive", "settle_n": need, "statement": statement, "reason": statement + aside}


def _row(name: str, idx: list[int], student_agree: Sequence[float | None],
         untrained_agree: Sequence[float | None] | None, student_gold: Sequence[float | None],
         teacher_gold: Sequence[float | None], bar: QualityBar, min_n: int, n_boot: int, seed: int,
         judge_scores: Sequence[float | None] | None = None,
         judge_flips: Sequence[bool | None] | None = None) -> dict[str, Any]:
    """One slice's row: agreement with the teacher, the gold gap and ratio, the judge score, and a verdict."""
    row: dict[str, Any] = {"slice": name, "n": len(idx),
                           "agreement": share_interval([student_agree[i] for i in idx])}
    scored = [judge_scores[i] for i in idx if judge_scores[i] is not None] if judge_scores is not None else []
    if judge_scores is not None:
        # The judge ran: a slice it judged no example of (all past judge.max_examples, or every answer
        # unreadable) has a score of n 0, too small, not a fall back to the exact match the judge replaces.
        row["judge_score"] = bootstrap_mean(scored, n_boot, seed=seed)
    if scored:
        flipped = [judge_flips[i] for i in idx if judge_flips[i] is not None] if judge_flips is not None else []
        if flipped:
            row["judge_score"]["inconsistent"] = sum(flipped) / len(flipped)
    if untrained_agree is not None:
        row["untrained_agreement"] = share_interval([untrained_agree[i] for i in idx])
    g = [i for i in idx if student_gold[i] is not None and teacher_gold[i] is not None]
    if g:
        s, t = [student_gold[i] for i in g], [teacher_gold[i] for i in g]
        row["gold"] = {"n": len(g), "student": sum(s) / len(s), "teacher": sum(t) / len(t),
                       "gap": bootstrap_gap(s, t, n_boot, seed=seed),
                       "relative": bootstrap_ratio(s, t, n_boot, seed=seed)}
    row.update(judge(row["agreement"], row.get("gold"), bar, min_n, row.get("judge_score")))
    return row


def slice_table(names: Sequence[list[str]], student_agree: Sequence[float],
                untrained_agree: Sequence[float] | None, student_gold: Sequence[float | None],
                teacher_gold: Sequence[float | None], bar: QualityBar, min_n: int, n_boot: int,
                seed: int = 0, judge_scores: Sequence[float | None] | None = None,
                judge_flips: Sequence[bool | None] | None = None) -> list[dict[str, Any]]:
    """One row per slice (``all`` first): agreement with the teacher, the gold gap and ratio, and a verdict.

    ``*_agree`` are per-example agreements with the teacher in [0, 1]; ``*_gold`` per-example
    scores against gold (None where an example has no gold); ``judge_scores`` the judge's per-example
    score of the student against the teacher (``judge.score``; None where it did not judge), and
    ``judge_flips`` whether its two verdicts on each disagreed (``judge.flips``).
    """
    members: dict[str, list[int]] = {"all": list(range(len(names)))}
    for i, ns in enumerate(names):
        for n in ns:
            members.setdefault(n, []).append(i)
    return [_row(name, members[name], student_agree, untrained_agree, student_gold, teacher_gold,
                 bar, min_n, n_boot, seed, judge_scores, judge_flips)
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
    """1.0 where ``a`` has ``b``'s value of ``field`` or both lack it, None where ``b`` is not an object
    (an invalid reference says nothing about its fields). A field one lacks differs, null on the other
    too: exact match, field precision and the whole-answer agreement count {"b": null} against {} a
    miss, and this row counted it the same."""
    if not isinstance(b, dict):
        return None
    if not isinstance(a, dict) or (field in a) != (field in b):
        return 0.0
    return float(field not in b or json_same(a[field], b[field]))


def _unused(name: str, n: int) -> dict[str, Any]:
    """A field neither model wrote on any example (a schema property never used): both lacking it agree
    on every example, and the row passed at 100%, counted under GO as a slice that passes on its own.
    It has nothing to compare: n/a, judged on none, listed in no verdict."""
    why = f"n/a: neither the teacher nor the student wrote this field on any of the {n} test examples, nothing to compare"
    return {"slice": name, "n": n, "agreement": share_interval([]),
            "judged_on": "agreement", "n_judged": 0, "verdict": "n/a", "settle_n": None, "statement": why, "reason": why}


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
        if not any(isinstance(x, dict) and f in x for i in idx for x in (student[i], teacher[i])):
            rows.append(_unused(f"field:{f}", len(idx)))
            continue
        raw = [_same_field(u, t, f) for u, t in zip(untrained, teacher)] if untrained is not None else None
        s_gold = [_same_field(s, g, f) for s, g in zip(student, gold)]
        t_gold = [_same_field(t, g, f) for t, g in zip(teacher, gold)]
        rows.append(_row(f"field:{f}", idx, agree, raw, s_gold, t_gold, bar, min_n, n_boot, seed))
    return rows
