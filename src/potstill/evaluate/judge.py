"""Teacher as judge: a strong model compares the student's and the teacher's outputs, pairwise.

Each test input is shown to the judge twice, once with the student's answer as A and once as B,
because LLM judges favour a position (often the first). A verdict counts only when both orders
agree once mapped back to the student: win, tie or loss; two orders that disagree make the
example ``inconsistent`` (a judge that always says "A" is inconsistent on every input), and an
answer that is not one of A, B or TIE (or a failed call) is ``bad`` and counted, never fatal. An
answer of "" stopped at the judge's token limit (a reasoning judge that thought past it) is a failed
call, paid and not reused; a reasoning judge gets ``REASONING_BUDGET`` tokens more, at low effort.

Every judge call is one ledger row with role ``judge`` (cost, tokens, latency), and the ledger is
the cache: re-running evaluate asks the judge nothing it has already answered.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any, Sequence

from rich.markup import escape

from potstill.config import Config, TeacherConfig
from potstill.evaluate import cost_words
from potstill.evaluate.bootstrap import bootstrap_mean
from potstill.evaluate.exact import share_interval
from potstill.evaluate.metrics import chrf, spearman
from potstill.generate import ledger_call, request_hash
from potstill.ledger import Ledger
from potstill.progress import bar, say
from potstill.records import Record
from potstill.tasks import Task
from potstill.teachers import Response, get_teacher
from potstill.teachers.api.prices import price_for
from potstill.teachers.base import RunStats
from potstill.teachers.reasoning import REASONING_BUDGET, reasoning_teacher, reasons, spent_before_answering

OUTCOMES = ("win", "tie", "loss", "inconsistent", "bad")
_ANSWER = re.compile(r"^\W*(TIE|A|B)\b", re.IGNORECASE)


class PromptTask(Task):
    """Sends a record's messages as they are: the judge prompt already holds its own instruction."""

    name = "prompt"

    def messages(self, record: Record) -> list[dict[str, Any]]:
        return list(record.messages)


def judge_messages(rubric: str, instruction: str, text: str, a: str, b: str) -> list[dict[str, str]]:
    system = ("You compare two answers to the same task. " + rubric.strip() +
              " Reply with exactly one word: A if answer A is better, B if answer B is better,"
              " TIE if they are equally good.")
    user = (f"Task instruction:\n{instruction}\n\nInput:\n{text}\n\n"
            f"Answer A:\n{a}\n\nAnswer B:\n{b}\n\nWhich answer is better? Reply A, B or TIE.")
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def parse_choice(output: str | None) -> str | None:
    """"A", "B" or "TIE" from the judge's reply, else None (a bad answer)."""
    m = _ANSWER.match(output or "")
    return m.group(1).upper() if m else None


def combine(first: str | None, second: str | None) -> str:
    """The student's outcome from both orders: first has the student as A, second as B."""
    if first is None or second is None:
        return "bad"
    as_a = {"A": "win", "B": "loss", "TIE": "tie"}[first]
    as_b = {"B": "win", "A": "loss", "TIE": "tie"}[second]
    return as_a if as_a == as_b else "inconsistent"


def judge_teacher_config(cfg: Config) -> TeacherConfig:
    """The judge's model: ``evaluate.judge.teacher`` when set, else the run's teacher."""
    t = cfg.evaluate.judge.teacher or cfg.teacher
    # A verdict should not depend on a sample: judge greedily, with room for one word and a margin.
    update: dict[str, Any] = {"temperature": 0.0, "max_tokens": cfg.evaluate.judge.max_tokens, "logprobs": 0}
    if reasons(t):
        # A reasoning judge thinks before its one word, in the same budget: 8 tokens gave every answer ""
        # stopped at length, each read as "bad". It gets room for its reasoning, at low effort unless set.
        update["max_tokens"] += t.thinking_budget or REASONING_BUDGET  # Claude's: above its thinking budget
        if t.type == "openai" and reasoning_teacher(t):
            update["reasoning_effort"] = t.reasoning_effort or "low"
    return t.model_copy(update=update)


def unanswered(resp: Response, max_tokens: int) -> Response:
    """``resp`` as a failed call where the judge spent its whole budget before its first word: paid,
    but no verdict, and never reused from the ledger as one (a rerun under a larger budget asks again)."""
    if not resp.ok or not spent_before_answering(resp.output, resp.stop_reason):
        return resp
    return replace(resp, output=None, error=f"the judge spent all of its {max_tokens} output tokens before answering "
                   "(a reasoning model's hidden reasoning counts in them); raise evaluate.judge.max_tokens")


def ask(cfg: Config, task: Task, prompts: list[list[dict[str, str]]],
        ledger: Ledger) -> tuple[list[Response | dict], list[str]]:
    """Each prompt's answer: from the ledger when cached, else from the judge (one ``judge`` row per call);
    and each prompt's request hash, the key of its rows in the ledger."""
    teacher = get_teacher(judge_teacher_config(cfg), PromptTask(task.cfg))
    if cfg.evaluate.judge.teacher is not None and hasattr(teacher, "key_setting"):
        teacher.key_setting = "evaluate.judge.teacher.api_key_env"
    try:
        priced = not teacher.remote or price_for(teacher.cfg.model, teacher.cfg.price, cfg.generate.prices)
        if not priced:
            where = "evaluate.judge.teacher.price" if cfg.evaluate.judge.teacher is not None else "teacher.price"
            say(f"[yellow]evaluate: no price is known for the judge model {escape(repr(teacher.cfg.model))}: its calls count $0 in "
                f"the ledger, eval.json and the report; set {where} (input_per_mtok, output_per_mtok) or add the "
                "model to generate.prices[/yellow]")
        ident = teacher.identity()
        reqs = [teacher.request(Record(messages=p)) for p in prompts]
        hashes = [request_hash({"judge": ident}, q) for q in reqs]
        answers: dict[str, Any] = ledger.lookup(list(dict.fromkeys(hashes)), role="judge")
        first: dict[str, int] = {}
        for i, h in enumerate(hashes):
            first.setdefault(h, i)
        todo = [i for h, i in first.items() if h not in answers]
        errors: dict[str, str] = {}
        stats = RunStats()
        with bar(f"evaluate: judge {teacher.model_name}", len(todo)) as advance:

            def on_result(j: int, resp: Response) -> None:
                i = todo[j]
                resp = unanswered(resp, teacher.cfg.max_tokens)
                call = ledger_call(hashes[i], teacher, "evaluate", reqs[i], resp)
                call.role = "judge"
                ledger.record(call)
                stats.count(resp)  # the budget reads it before the next request goes out
                if call.status == "ok":
                    answers[hashes[i]] = call.response
                else:
                    errors[hashes[i]] = resp.error or "no output"
                advance(1)

            if todo:
                # API judges run on the teacher engine, so generate.prices, rate limits and budget apply here too.
                teacher.run([reqs[i] for i in todo], on_result, stats, cfg.generate)
    finally:
        teacher.close()
    return [answers.get(h) or {"error": errors.get(h, "no answer")} for h in hashes], hashes


def automatic_metric(task: Task, student: Sequence[Any], teacher: Sequence[Any],
                     agree: Sequence[float]) -> tuple[str, list[float]]:
    """The per-example metric the verdicts are set beside: (its name, one value per example).

    Free text is scored by chrF against the teacher's answer: exact match, which a summary or a
    rewrite almost never reaches, gave every verdict a mean of 0 and no correlation to read. Other
    tasks keep their agreement (exact JSON or label)."""
    if task.name == "freetext":
        return "chrF", [chrf(str(s or ""), str(t or "")) for s, t in zip(student, teacher)]
    return "agreement", [float(a) for a in agree]


def agreement_with_metric(outcomes: Sequence[str], metric: Sequence[float], name: str = "agreement") -> dict[str, Any]:
    """How the judge's consistent verdicts line up with the automatic metric ``name`` (student vs teacher).

    The mean metric per verdict (a judge and metric that agree give win >= tie >= loss), and the
    Spearman correlation between the verdict scored win 1, tie 0.5, loss 0 and the metric.
    """
    score = {"win": 1.0, "tie": 0.5, "loss": 0.0}
    pairs = [(score[o], float(m)) for o, m in zip(outcomes, metric) if o in score and m is not None]
    by = {o: [float(m) for oo, m in zip(outcomes, metric) if oo == o and m is not None] for o in score}
    out: dict[str, Any] = {"metric": name, "n": len(pairs),
                           "metric_mean_by_verdict": {o: (sum(v) / len(v) if v else None) for o, v in by.items()}}
    # numpy, not scipy.stats.spearmanr: scipy is no dependency, and importing it crashed evaluate after
    # the judge's calls were paid, on every run whose verdicts and metric both varied.
    out["spearman"] = spearman([p[0] for p in pairs], [p[1] for p in pairs]) if len(pairs) >= 3 else None
    return out


def summary_line(judged: dict[str, Any]) -> str:
    """What the judge found, in one line for the terminal (eval.json and the report hold the rest)."""
    c, rate = judged["counts"], judged["first_position_rate"]
    return (f"evaluate: judge {judged['model']} on {judged['n']} test inputs: the student won {c['win']}, tied "
            f"{c['tie']}, lost {c['loss']}; {c['inconsistent']} inconsistent (the two orders disagreed), {c['bad']} "
            f"unreadable; it named position A in " + ("-" if rate is None else f"{100 * rate:.1f}%")
            + f" of its answers; {cost_words(judged['cost'], lambda x: f'${x:.4f}')}")


# A verdict as the student's score against the teacher, 0.5 being as good. Opposite verdicts in the two
# orders are a judge that cannot tell the answers apart beyond its position bias: a tie.
SCORE = {"win": 1.0, "tie": 0.5, "inconsistent": 0.5, "loss": 0.0}


def scores(judged: dict[str, Any], n: int) -> list[float | None]:
    """The judge score (``SCORE``) of each of the ``n`` test examples, None where it gave none (an
    unreadable answer or a failed call, or past ``judge.max_examples``), for the verdict's slices."""
    out: list[float | None] = [SCORE.get(e["verdict"]) for e in judged["examples"]]
    return out + [None] * (n - len(out))


def flips(judged: dict[str, Any], n: int) -> list[bool | None]:
    """Whether each of the ``n`` test examples' two verdicts disagreed (``inconsistent``), None where
    ``scores`` has none: the share the quality bar's ``max_judge_inconsistency`` reads."""
    out: list[bool | None] = [e["verdict"] == "inconsistent" if e["verdict"] in SCORE else None
                              for e in judged["examples"]]
    return out + [None] * (n - len(out))


def rates(outcomes: Sequence[str], n_boot: int, seed: int) -> dict[str, Any]:
    """Win/tie/loss/inconsistent shares with exact (Clopper-Pearson) intervals and the mean score with a
    bootstrap one, over the examples judged (bad excluded)."""
    judged = [o for o in outcomes if o != "bad"]
    row: dict[str, Any] = {"n": len(outcomes), "judged": len(judged), "bad": len(outcomes) - len(judged)}
    for o in ("win", "tie", "loss", "inconsistent"):
        row[o] = share_interval([float(x == o) for x in judged])
    row["score"] = bootstrap_mean([SCORE[o] for o in judged], n_boot, seed=seed)
    return row


def run_judge(cfg: Config, task: Task, test: Sequence[Record], student: Sequence[str], metric: Sequence[float],
              names: Sequence[list[str]], ledger: Ledger, metric_name: str = "agreement") -> dict[str, Any]:
    """Judge the student against the teacher on the test split: per-example verdicts, rates per slice, cost.

    ``metric``: the automatic metric per test example (``metric_name``, see ``automatic_metric``)."""
    j, rep = cfg.evaluate.judge, cfg.report
    idx = list(range(len(test)))[: j.max_examples]
    # The student wrote the teacher's very answer: both orders would be one and the same prompt, whose
    # single reply read once per order turns any A or B into "inconsistent". It is a tie, unasked.
    same = {i for i in idx if student[i].strip() == (test[i].output or "").strip()}
    prompts = []
    for i in idx:
        if i in same:
            continue
        teacher_out = test[i].output or ""
        prompts.append(judge_messages(j.rubric, task.cfg.instruction, test[i].text, student[i], teacher_out))
        prompts.append(judge_messages(j.rubric, task.cfg.instruction, test[i].text, teacher_out, student[i]))
    before, rows_before = ledger.summary("judge"), ledger.count(role="judge")
    asked, hashes = ask(cfg, task, prompts, ledger) if prompts else ([], [])
    after, recorded = ledger.summary("judge"), ledger.spend_for(hashes, role="judge")
    # Calls that failed (not cached: the next evaluate asks them again), apart from unreadable answers.
    failed = [a["error"] for a in asked if isinstance(a, dict) and "error" in a and a.get("output") is None]
    answers = iter(asked)
    examples, outcomes = [], []
    choices = {"A": 0, "B": 0, "TIE": 0, "bad": 0}
    for i in idx:
        if i in same:
            outcomes.append("tie")
            examples.append({"id": test[i].id, "verdict": "tie", "student_first": None, "student_second": None,
                             "identical": True, "metric": metric[i], "slices": list(names[i])})
            continue
        first, second = (a.get("output") if isinstance(a, dict) else None for a in (next(answers), next(answers)))
        c1, c2 = parse_choice(first), parse_choice(second)
        for c in (c1, c2):
            choices[c or "bad"] += 1
        outcome = combine(c1, c2)
        outcomes.append(outcome)
        examples.append({"id": test[i].id, "verdict": outcome, "student_first": first, "student_second": second,
                         "metric": metric[i], "slices": list(names[i])})
    members: dict[str, list[int]] = {"all": list(range(len(idx)))}
    for k, i in enumerate(idx):
        for n in names[i]:
            members.setdefault(n, []).append(k)
    slices = [{"slice": s, **rates([outcomes[k] for k in members[s]], rep.bootstrap_samples, rep.seed)}
              for s in ["all", *sorted(m for m in members if m != "all")]]
    valid = choices["A"] + choices["B"] + choices["TIE"]
    return {
        "model": judge_teacher_config(cfg).model, "rubric": j.rubric, "n": len(idx),
        "counts": {o: outcomes.count(o) for o in OUTCOMES}, "choices": choices,
        # Share of readable answers that named position A: ~0.5 for a fair judge whatever the quality.
        "first_position_rate": choices["A"] / valid if valid else None,
        "slices": slices, "agreement_with_metric": agreement_with_metric(outcomes, [metric[i] for i in idx], metric_name),
        # calls: rows this run wrote, failed calls too (summary's calls are the answered ones only);
        # recorded: every row these prompts have in the ledger, whichever run wrote it.
        "cost": {"calls": ledger.count(role="judge") - rows_before, "cost_usd": after["cost_usd"] - before["cost_usd"],
                 "recorded_calls": recorded["calls"], "recorded_usd": recorded["cost_usd"],
                 "input_tokens": after["input_tokens"] - before["input_tokens"],
                 "output_tokens": after["output_tokens"] - before["output_tokens"],
                 "ledger_total_usd": after["cost_usd"]},
        "failed_calls": len(failed), "first_error": failed[0] if failed else None,
        "examples": examples,
    }
