"""Served traffic (``stage='serve'`` rows of RUN/calls.sqlite) as records to distil from.

Two kinds of request, told apart by the ledger row's ``role`` (who answered):
- escalated (``teacher``): the teacher already answered while serving; its answer (and, for a
  local classification teacher, its label distribution) is taken from the row, never paid again;
- student-answered (``student``): a seeded sample is asked anew from the teacher through
  ``potstill.generate.label_records``, so each answer is a ledger row and a rerun is free.
Identical requests served many times count once (the escalated copy wins: it is already paid).
A generated escalation the client cut with a ``max_tokens`` under the teacher's was asked of the
teacher so, so it is not the teacher's answer: it is counted (``escalated_cut``) and left out, as
asking again would pay for the same request twice. One its ``stop`` cut is learnt from the whole
answer serve keeps in the row (``teacher_output``); an older row, which kept only the cut text, is
left out the same way. An escalation
the teacher answered with tool calls (a client's ``tools``) has no text answer to learn: counted
(``escalated_tool_calls``) and left out; except in a tools task, where a call the teacher made for
the task's own tools (routed as any answer, not sent to it for other tools, a tool turn or a
function the client forced) is the answer, as ``{name, arguments}``. So is one a client's ``response_format`` sent to the
teacher (``escalated_response_format``): it was asked for the client's JSON, not the task's answer;
like a cut one, it leaves the chat to another copy served without the format.
A request's ``metadata.label`` (the OpenAI chat ``metadata`` field), when it names one of the
task's labels, is kept as gold.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from potstill.config import Config
from potstill.curate.split import rank
from potstill.errors import PotstillError
from potstill.generate import label_records
from potstill.hashing import hash_obj
from potstill.ledger import Ledger
from potstill.progress import say
from potstill.records import Record
from potstill.tasks import Task
from potstill.teachers import RunStats, get_teacher
from potstill.tool_calls import call_text


@dataclass
class Traffic:
    escalated: list[Record] = field(default_factory=list)
    student: list[Record] = field(default_factory=list)  # student-answered, not yet labelled by the teacher
    counts: dict[str, int] = field(default_factory=dict)
    served_teacher_cost_usd: float = 0.0  # what the escalations cost while serving (already paid)


def cut_by_client(request: dict, teacher_max_tokens: int, whole_kept: bool = False) -> bool:
    """Whether a served generated answer was cut to the client's limits (``serve``'s ``stop`` and
    ``max_tokens`` handling): fewer tokens than the teacher's own budget (the teacher was asked for
    no more), or a stop sequence where the row does not keep the whole answer (``whole_kept``)."""
    from potstill.teachers.api.engine import max_output

    return (bool(request.get("stop")) and not whole_kept) or 0 < max_output(request) < teacher_max_tokens


def teacher_answer(row) -> str:
    """The teacher's whole answer to a served escalation: the text serve kept before a client's stop
    cut what it sent (``teacher_output``), else the text sent."""
    return str(row.extra.get("teacher_output", row.content))


def task_call(task: Task, row) -> bool:
    """Whether a served escalation's tool calls are a tools task's answer: the teacher was asked for
    the task's own tools as generate asks (routed there as any answer; reason ``tools`` is another
    tool set, a tool turn or a forced function that the student did not call), no function forced."""
    choice = row.request.get("tool_choice")
    forced = isinstance(choice, dict) and choice.get("type") in ("function", "tool")
    return task.cfg.type == "tools" and not row.reason.startswith("tools") and not forced


def read_traffic(ledger: Ledger, task: Task, teacher_max_tokens: int) -> Traffic:
    """Every answered served request, once per distinct chat; ``teacher_max_tokens``: the run's
    ``teacher.max_tokens``, under which a client's ``max_tokens`` cut the teacher's answer."""
    rows = ledger.served(status=None)
    ok = [r for r in rows if r.status == "ok"]
    t = Traffic(counts={"served_rows": len(rows), "served_ok": len(ok), "escalated_cut": 0, "escalated_tool_calls": 0,
                        "escalated_response_format": 0})
    seen: dict[str, Record] = {}
    for row in sorted(ok, key=lambda r: (not r.escalated, r.id)):  # escalations first
        messages = row.chat  # with its tool turns' fields: the teacher asks them back, the student reads them
        if not any(m["role"] == "user" and m["content"].strip() for m in messages):
            continue
        key = hash_obj(messages)
        if key in seen:
            continue
        # A label is never cut; a generated answer may have been. Not marked seen: an uncut copy
        # of the same chat, served another time, is still used.
        # Rows that name the teacher's stop reason (since 2026-12) keep its whole answer (``teacher_answer``).
        if row.escalated and not task.labels and cut_by_client(row.request, teacher_max_tokens,
                                                                "teacher_stop_reason" in row.extra):
            t.counts["escalated_cut"] += 1
            continue
        if row.escalated and row.reason.startswith("response_format"):
            t.counts["escalated_response_format"] += 1
            continue
        if row.escalated and row.extra.get("tool_calls") and not task_call(task, row):
            t.counts["escalated_tool_calls"] += 1
            continue
        metadata = row.request.get("metadata")
        gold = metadata.get("label") if isinstance(metadata, dict) else None
        meta = {"source": "serve", "answered_by": row.answered_by, "reason": row.reason or None,
                "ledger_id": row.id, "served_at": row.created_at}
        rec = Record(messages=messages, label=gold if gold in task.labels else None, meta=meta,
                     slice=[f"served:{'escalated' if row.escalated else 'student'}"])
        if row.escalated:
            rec.output = call_text(row.extra["tool_calls"]) if row.extra.get("tool_calls") else teacher_answer(row)
            rec.label_probs = row.extra.get("teacher_label_probs")
            rec.meta.update(teacher=row.model, cost_usd=row.cost_usd, input_tokens=row.input_tokens,
                            output_tokens=row.output_tokens)
            t.served_teacher_cost_usd += row.cost_usd
            t.escalated.append(rec)
        else:
            t.student.append(rec)
        seen[key] = rec
    t.counts.update(distinct=len(seen), escalated=len(t.escalated), student_answered=len(t.student))
    return t


def sample_size(n: int, sample: float) -> int:
    """A fraction of n (0 to 1; 1 is all of them), rounded, or a count (> 1), capped at n."""
    return min(n, round(sample * n) if sample <= 1 else int(sample))


def to_label(student: list[Record], student_sample: float, new_test: float, seed: int) -> tuple[list[Record], int]:
    """The student-answered records the teacher labels, and how many of them ``student_sample`` did not ask for.

    The lowest split ranks on purpose: the new-traffic test takes ranks under ``new_test``
    (``curate.split``), and every student-answered input there is labelled, whatever
    ``student_sample``, so the test is a uniform share of *all* traffic (escalated and not). With a
    smaller sample only the lowest ranks were labelled while every escalated input under the cut was
    in the test: 88% escalated where the traffic was 67%, the gain weighted to the slice where the
    champion is weakest, and a challenger worse on the served mix promoted the more often the more
    traffic there was. The training side gets the student-answered inputs between the two."""
    ranked = sorted(student, key=lambda r: rank(r.text, seed))
    k = sample_size(len(student), student_sample)
    in_test = sum(1 for r in ranked if rank(r.text, seed) < new_test)
    return ranked[:max(k, in_test)], max(0, in_test - k)


def label_sample(cfg: Config, traffic: Traffic, task: Task, ledger: Ledger) -> tuple[list[Record], RunStats]:
    """Ask the teacher about a seeded sample of the student-answered requests (ledger-cached)."""
    rc = cfg.redistill
    chosen, extra = to_label(traffic.student, rc.student_sample, rc.new_test, rc.seed)
    if extra:
        say(f"redistill: --student-sample {rc.student_sample:g} is {len(chosen) - extra} of the "
            f"{len(traffic.student)} student-answered requests, fewer than the {len(chosen)} that fall in the "
            f"new-traffic test (--new-test {rc.new_test:g}): the teacher labels those {len(chosen)}, so the test "
            f"holds escalated and student-answered traffic as served ({len(traffic.escalated)} and "
            f"{len(traffic.student)}), not mostly the escalated inputs where the champion is weakest")
    if not chosen:
        return [], RunStats()
    teacher = get_teacher(cfg.teacher, task)
    try:
        labelled, stats = label_records(chosen, task, teacher, ledger, stage="redistill", gcfg=cfg.generate)
    finally:
        teacher.close()
    if stats.budget_stopped:
        raise PotstillError(f"redistill: generate.budget_usd ${cfg.generate.budget_usd:g} reached after "
                            f"${stats.cost_usd:.4f}; answered requests are cached, raise the budget and rerun")
    if stats.halted:
        raise PotstillError(f"redistill: stopped, {stats.halted[:300]}; every other request would fail the same way: "
                            "fix the teacher and rerun (answered requests are cached)")
    # Failed calls are not cached, so a rerun retries them. With none answered (a revoked key, a teacher
    # that is down) the new data would be the escalations alone, and curation's "rejected" would hide why.
    failed = [r.invalid_reason for r in labelled if (r.invalid_reason or "").startswith("teacher error")]
    if failed and len(failed) == len(labelled):
        raise PotstillError(f"redistill: {len(failed)} of {len(labelled)} teacher calls failed ({failed[0]}); "
                            "nothing learnt from the student-answered traffic: fix the teacher and rerun")
    if failed:
        say(f"redistill: {len(failed)} of {len(labelled)} teacher calls failed ({failed[0]}); those requests are "
            "left out of the new data, a rerun retries them")
    for r in labelled:
        r.meta.update(source="serve", answered_by="student")
    return labelled, stats


def check_traffic(traffic: Traffic, cfg: Config) -> None:
    """One clear line when there is nothing to distil from."""
    if traffic.counts["served_rows"] == 0:
        raise PotstillError("redistill: no served traffic in calls.sqlite (serve the student with `potstill serve` first)")
    if traffic.counts["distinct"] == 0:
        cut = traffic.counts.get("escalated_cut", 0)
        raise PotstillError(f"redistill: none of the {traffic.counts['served_rows']} served requests was answered"
                            + (f" whole ({cut} escalations were cut to the client's stop or max_tokens)" if cut else ""))
    k = sample_size(len(traffic.student), cfg.redistill.student_sample)
    if not traffic.escalated and k == 0:
        why = ("redistill.student_sample is 0" if cfg.redistill.student_sample == 0
               else "no request was answered by the student")
        raise PotstillError(f"redistill: no escalated requests to learn from and {why}: "
                            "raise --student-sample to have the teacher label student-answered traffic")
