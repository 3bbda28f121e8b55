"""`potstill synthesize`: seeds + task -> RUN/synthetic.jsonl (seeds tagged real, new inputs tagged synthetic).

Round one asks for every cell's quota; later rounds (up to ``synthesize.max_rounds``) ask again
for what the screen rejected. Requests are numbered per cell and planned deterministically, so a
rerun (after a crash or ``kill -9``) rebuilds the same requests and the ledger answers all those
already paid for.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from rich.markup import escape

from potstill.config import Config, GenerateConfig
from potstill.errors import PotstillError
from potstill.generate import check_settings, label_records
from potstill.progress import say
from potstill.records import Record, read_numbered, read_records, write_json, write_jsonl
from potstill.rundir import RunDir
from potstill.synthesize import PromptTask, Screen, Slot, check_cells, extract, former_prompt, prompt, quotas, slot
from potstill.tasks import get_task
from potstill.teachers import get_teacher, request_hash
from potstill.teachers.base import Teacher

# Below this share of round one's answers holding an input, synthesize asks no further rounds.
MIN_USABLE = 0.1


def _references(cfg: Config, run: RunDir) -> tuple[list[Record], list[str], list[str]]:
    """The seed records, the test inputs no synthetic input may come near, and those of RUN/test.jsonl
    that an earlier synthesize wrote (curate split them there; a rerun that writes one again keeps it)."""
    s = cfg.synthesize
    numbered = read_numbered(s.seeds) if s.seeds else []
    # Gold labels in the label set's spelling ("Sports" -> "sports"), as generate reads them: a label
    # cell's prompts show the seeds of that label, and synthetic.jsonl keeps what generate expects.
    get_task(cfg.task).check_gold(numbered, s.seeds, cfg.data.max_unknown_gold)
    seeds = [r for _, r in numbered]
    tests = [r.text for r in read_records(s.test_inputs)] if s.test_inputs else []
    _say_seeds_near_tests(cfg, seeds, tests)  # the user's held-out inputs alone, before RUN/test.jsonl's join them
    own: list[str] = []
    if (run / "test.jsonl").exists():
        for r in read_records(run / "test.jsonl"):
            (own if r.meta.get("synthetic") else tests).append(r.text)
    return seeds, tests, own


class Synthesis:
    """One synthesize run: the plan's state, the screen and the tally of what was kept or rejected."""

    def __init__(self, cfg: Config, seeds: list[Record], tests: list[str], own_tests: Sequence[str] = ()):
        self.cfg, self.s = cfg, cfg.synthesize
        self.completion = cfg.teacher.prompt_format == "completion"
        self.quota = quotas(self.s, cfg.task)
        self.seed_texts = [r.text for r in seeds]
        # A cell named after a label shows only seeds with that label when there are some: a base
        # model continues the pattern it is shown, whatever the header says.
        self.pools = {c: [r.text for r in seeds if r.label == c] or self.seed_texts for c in self.quota}
        self.screen = Screen([("a seed input", t) for t in self.seed_texts], tests, self.s.near_dup_threshold,
                             self.s.test_threshold, own_tests)
        self.kept: dict[str, list[Record]] = {c: [] for c in self.quota}
        self.attempts: Counter[str] = Counter()
        self.rejected: Counter[str] = Counter()
        self.rejected_examples: list[dict[str, Any]] = []
        self.answers = 0
        self.usable = 0
        self.cost_usd = 0.0
        self.calls = 0
        self.errors = 0  # teacher calls that failed (not cached: a rerun asks them again)
        self.first_error = ""
        self.budget_stopped = False

    def next_slots(self) -> list[Slot]:
        slots = []
        for cell, want in self.quota.items():
            for _ in range(want - len(self.kept[cell])):
                slots.append(slot(self.s, cell, self.attempts[cell], self.pools[cell]))
                self.attempts[cell] += 1
        return slots

    def reject(self, why: str, sl: Slot, text: str | None) -> None:
        key = why.split(" (")[0]
        self.rejected[key] += 1
        if len(self.rejected_examples) < 20:
            self.rejected_examples.append({"reason": why, "plan": sl.plan(), "text": (text or "")[:300]})

    def take(self, sl: Slot, rec: Record, teacher_name: str) -> None:
        """Screen one answered request and keep its input if it passes."""
        if rec.output is None and str(rec.invalid_reason).startswith("teacher refused"):
            # Billed, and not sent again (unless generate.retry_refusals): a rejection, not a failed
            # call to rerun for, which would fail the same way every time.
            return self.reject("teacher refused", sl, str(rec.invalid_reason))
        if rec.output is None:
            self.errors += 1
            self.first_error = self.first_error or str(rec.invalid_reason)
            return self.reject(str(rec.invalid_reason), sl, None)
        self.answers += 1
        text = extract(rec.output, opened=self.completion)
        if text is None:
            return self.reject("unusable: no <input>...</input> block in the answer", sl, rec.output)
        self.usable += 1
        if len(text) < self.s.min_chars:
            return self.reject(f"too short ({len(text)} < {self.s.min_chars} characters)", sl, text)
        why = self.screen.check(text)
        if why is not None:
            return self.reject(why, sl, text)
        self.kept[sl.cell].append(Record(
            id=f"syn-{rec.meta.get('request_hash', '')[:16]}", messages=[{"role": "user", "content": text}],
            slice=["synthetic", f"cell:{sl.cell}"],
            meta={"synthetic": True, "plan": sl.plan(), "teacher": teacher_name,
                  "request_hash": rec.meta.get("request_hash"), "cost_usd": rec.meta.get("cost_usd", 0.0)}))


def synthesis_teacher(cfg: Config) -> tuple[Teacher, PromptTask]:
    """The run's teacher set up to write inputs rather than answer them, and the task it runs."""
    s = cfg.synthesize
    # structured_outputs off, and (below) a free-text task without tools, schema or grammar: a request
    # carrying the task's tools (a call required) or its response format holds a compliant teacher
    # (OpenAI, vLLM) to a call or a JSON object, never the <input> block asked for. prompt() describes
    # them in its text instead.
    update: dict[str, Any] = {"temperature": s.temperature, "max_tokens": s.max_tokens, "logprobs": 0,
                              "structured_outputs": "off"}
    completion = cfg.teacher.prompt_format == "completion"
    if completion:
        # A base model continues text: the prompt ends with "<input>" and carries no task instruction
        # (the synthesis prompt has its own), and few-shot labelled shots would only confuse it.
        # It stops at the tag that closes its input, or at the next one it opens, instead of writing on.
        update.update(answer_prefix="<input>", few_shot=cfg.teacher.few_shot.model_copy(update={"k": 0}),
                      stop=["</input>", "<input>"])
    tcfg = cfg.teacher.model_copy(update=update)
    free: dict[str, Any] = {"type": "freetext", "tools": None, "json_schema": None, "grammar": None}
    task = PromptTask(cfg.task.model_copy(update={**free, "instruction": ""} if completion else free))
    return get_teacher(tcfg, task), task


def synthesis_settings(cfg: Config) -> GenerateConfig:
    """generate's settings for synthesis requests: one sample each. generate.n votes on labels; a
    synthesis request keeps one input, so n samples would be paid for and n - 1 thrown away."""
    return cfg.generate.model_copy(update={"n": 1})


def under_former_keys(records: list[Record], slots: list[Slot], cfg: Config, teacher: Teacher, ledger: Any,
                      gcfg: GenerateConfig) -> list[Record]:
    """``records`` with each request the ledger does not answer, but answers as an earlier potstill
    worded it (``former_prompt``), asked in those words instead: label_records then finds that row,
    as generate finds a local teacher's under its former identity, and the input keeps the id
    (``syn-<hash>``) it had in synthetic.jsonl. A refusal under the earlier words counts too (it is
    not sent again, unless generate.retry_refusals, and then the current words are sent)."""
    completion = cfg.teacher.prompt_format == "completion"
    former = {i: f for i, sl in enumerate(slots)
              if (f := former_prompt(cfg.task, sl, completion)) is not None and f != records[i].messages}
    if not former:
        return records
    ident = teacher.identity()

    def key(messages: list[dict[str, Any]]) -> str:
        return request_hash(ident, teacher.request(Record(messages=messages)))

    current = {i: key(records[i].messages) for i in former}
    answered = ledger.lookup(list(current.values()))
    old = {i: key(f) for i, f in former.items() if current[i] not in answered}
    hashes = list(dict.fromkeys(old.values()))
    found = set(ledger.lookup(hashes)) | (set() if gcfg.retry_refusals else set(ledger.refusals(hashes)))
    return [Record(messages=former[i]) if old.get(i) in found else r for i, r in enumerate(records)]


def synthesize(cfg: Config, seeds: list[Record], tests: list[str], ledger: Any,
               made: tuple[Teacher, PromptTask], own_tests: Sequence[str] = ()) -> Synthesis:
    """Run the plan's rounds through ``teacher`` (``synthesis_teacher``) and the ledger until every
    quota is met or rounds run out."""
    s = cfg.synthesize
    teacher, task = made
    completion = cfg.teacher.prompt_format == "completion"
    syn = Synthesis(cfg, seeds, tests, own_tests)
    try:
        for rnd in range(s.max_rounds):
            slots = syn.next_slots()
            if not slots:
                break
            records = [Record(messages=prompt(cfg.task, sl, completion)) for sl in slots]
            gcfg = synthesis_settings(cfg)
            records = under_former_keys(records, slots, cfg, teacher, ledger, gcfg)
            if gcfg.budget_usd is not None:
                # The budget is the whole stage's: each round may spend only what earlier rounds left.
                gcfg = gcfg.model_copy(update={"budget_usd": max(0.0, gcfg.budget_usd - syn.cost_usd)})
            answered, stats = label_records(records, task, teacher, ledger, "synthesize", gcfg)
            syn.calls += stats.calls
            syn.cost_usd += stats.cost_usd
            for sl, rec in zip(slots, answered):
                syn.take(sl, rec, teacher.model_name)
            if stats.budget_stopped:
                syn.budget_stopped = True  # synthesize_body writes what was kept, then stops
                break
            if stats.errors == len(slots) or stats.halted:
                break  # a server down, a wrong key, a cell it refuses: more rounds would only fail again
            if rnd == 0 and syn.answers and syn.usable < MIN_USABLE * syn.answers:
                first = next(r.output for r in answered if r.output is not None and extract(r.output, completion) is None)
                rule = "continue the prompt's <input> with text" if syn.completion else \
                    "put the new input between <input> and </input>"
                if not syn.usable:
                    raise PotstillError(f"synthesize: the teacher {teacher.model_name} returned no usable input in "
                                        f"{syn.answers} answers (each must {rule}); first answer: {first[:120]!r}")
                # Another round asks again for nearly every input, and would pay for about as few.
                say("[yellow]" + escape(
                    f"synthesize: only {syn.usable} of {syn.answers} answers of the teacher {teacher.model_name} held "
                    f"an input (each must {rule}), under {MIN_USABLE:.0%}: no further rounds, which would pay for as "
                    f"few; first unusable answer: {first[:120]!r}. Try a stronger teacher"
                    + ("" if syn.completion else ", or teacher.prompt_format completion for a base model"))
                    + "[/yellow]")
                break
    finally:
        teacher.close()
    return syn


def card(syn: Synthesis, teacher: str, seeds: int, tests: int) -> dict[str, Any]:
    kept = sum(len(v) for v in syn.kept.values())
    return {
        "teacher": teacher, "seeds": seeds, "test_inputs_avoided": tests, "requests": sum(syn.attempts.values()),
        "calls_this_run": syn.calls, "cost_usd_this_run": syn.cost_usd,
        "written": kept, "rejected": sum(syn.rejected.values()), "rejected_by_reason": dict(syn.rejected),
        "cells": {c: {"quota": q, "kept": len(syn.kept[c]), "requests": syn.attempts[c]} for c, q in syn.quota.items()},
        "quotas_met": all(len(syn.kept[c]) >= q for c, q in syn.quota.items()),
        "rejected_examples": syn.rejected_examples,
    }


def synthesize_stage(cfg: Config, force: bool = False) -> dict[str, Any]:
    from potstill.pipeline import SYNTHESIZE

    return SYNTHESIZE.run(cfg, force)


def _say_seeds_near_tests(cfg: Config, seeds: list[Record], tests: list[str]) -> None:
    """One line when seeds come near the user's held-out ``synthesize.test_inputs``: the screen keeps
    synthetic inputs away from them, but seeds go to synthetic.jsonl as real inputs, so a student
    would train on what it is later tested on. Not RUN/test.jsonl: curate put those seeds there itself."""
    s = cfg.synthesize
    if not (seeds and tests):
        return
    screen = Screen([], tests, 1.0, s.test_threshold)
    near = [r for r in seeds if screen.near_test(r.text) >= s.test_threshold]
    if near:
        say(f"[yellow]synthesize: {len(near)} of {len(seeds)} seeds are near an input of synthesize.test_inputs "
            f"(Jaccard >= {s.test_threshold}; the first: id {escape(repr(near[0].id))}); seeds are kept in synthetic.jsonl as real "
            "inputs, so a student would be tested on what it trained on: take them out of the seeds or of the "
            "test inputs[/yellow]")


def synthesize_body(cfg: Config, run: RunDir) -> dict[str, Any]:
    check_cells(cfg.synthesize, cfg.task)
    s = cfg.synthesize
    if s.quotas and "n" in s.model_fields_set and sum(s.quotas.values()) != s.n:
        say(f"[yellow]synthesize: synthesize.quotas ask for {sum(s.quotas.values())} inputs in all; synthesize.n "
            f"({s.n}) is not used when quotas are given[/yellow]")
    seeds, tests, own = _references(cfg, run)
    # Made before the ledger is created, as generate's: a teacher that cannot be made leaves no
    # empty calls.sqlite (nor a new run directory holding only that).
    made = synthesis_teacher(cfg)
    check_settings(made[0], synthesis_settings(cfg))  # label_records checks them too, once the ledger exists
    with run.ledger() as ledger:
        syn = synthesize(cfg, seeds, tests, ledger, made, own)
    if syn.errors and not syn.answers and not syn.budget_stopped:
        raise PotstillError(f"synthesize: all {syn.errors} teacher calls failed ({syn.first_error}); "
                            "nothing written. Rerun to retry them")
    real = [r.model_copy(update={"slice": [*r.slice, "real"]}) for r in seeds]
    out_path = run / "synthetic.jsonl"
    write_jsonl(out_path, real + [r for c in syn.kept for r in syn.kept[c]])
    summary = card(syn, cfg.teacher.model or cfg.teacher.type, len(seeds), len(tests) + len(own))
    write_json(run / "synthesize.json", summary)
    short = {c: (len(syn.kept[c]), q) for c, q in syn.quota.items() if len(syn.kept[c]) < q}
    if syn.budget_stopped:
        # As generate writes the records answered before its budget stop: these inputs are paid for.
        raise PotstillError(f"synthesize: budget of ${cfg.generate.budget_usd:g} reached; {out_path} holds the "
                            f"{summary['written']} inputs kept so far. Rerun with a higher generate.budget_usd "
                            "(answered requests are cached)")
    if syn.errors and short:
        # Not marked done: failed requests are not cached, so the rerun asks them again (the rest is cached).
        raise PotstillError(f"synthesize: {syn.errors} teacher calls failed ({syn.first_error}) and quotas are not met "
                            f"({', '.join(f'{c}: {k} of {q}' for c, (k, q) in short.items())}); {out_path} holds "
                            "what was kept. Rerun to retry them; answered requests are cached")
    if syn.rejected["teacher refused"] and short:
        say(f"[yellow]synthesize: the teacher refused {syn.rejected['teacher refused']} requests; a refused request "
            "is billed and not sent again unless generate.retry_refusals: true[/yellow]")
    say(f"synthesize: {summary['written']} inputs written, {summary['rejected']} rejected "
        f"({', '.join(f'{k}: {v}' for k, v in syn.rejected.items()) or 'none'}), {syn.calls} teacher calls, "
        f"${syn.cost_usd:.4f}; {'quotas met' if summary['quotas_met'] else 'QUOTAS NOT MET'}; -> {out_path}")
    return {k: summary[k] for k in ("written", "rejected", "quotas_met", "calls_this_run")}
