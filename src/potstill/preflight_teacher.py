"""preflight's checks of the teacher's settings against what the run asks of it, before generate pays.

* ``output_budget``: a reasoning teacher (an OpenAI o-series or gpt-5 model, or any teacher with
  ``teacher.reasoning_effort``) counts its hidden reasoning in ``teacher.max_tokens``; below
  ``REASONING_BUDGET`` most answers come back empty, cut at the limit, and billed (a warning: a
  ``minimal`` effort may answer within less).
* ``kd_signal``: ``train.objective kd`` learning from the teacher's probabilities (``kd_signal``
  labels or topk, or auto without ``train.teacher_model``) needs a teacher that returns them: one
  that cannot (an OpenAI reasoning model, Anthropic, replay), or one left at ``teacher.logprobs 0``,
  fails before generate pays for answers train would refuse.
"""

from __future__ import annotations

from typing import Any

from potstill.errors import PotstillError
from potstill.preflight import Check
from potstill.teachers.reasoning import REASONING_BUDGET, reasons


def check_output_budget(ctx: Any) -> Check:
    t = ctx.cfg.teacher
    if not reasons(t):
        return Check("output_budget", "skip", "not a reasoning teacher")
    if t.max_tokens >= REASONING_BUDGET:
        return Check("output_budget", "ok", f"teacher.max_tokens {t.max_tokens} leaves room for reasoning")
    return Check("output_budget", "warn", f"teacher.max_tokens {t.max_tokens}: {t.model} is a reasoning teacher, whose "
                 "hidden reasoning counts in max_tokens before its first word (a few hundred tokens at low effort, "
                 "thousands at medium or high), so most answers would come back empty, cut at the limit and billed; "
                 f"set it to at least {REASONING_BUDGET} plus the answer's own tokens (or teacher.reasoning_effort "
                 "minimal or low)")


def check_kd_signal(ctx: Any) -> Check:
    from potstill.plugins import load_plugin

    tr, t = ctx.cfg.train, ctx.cfg.teacher
    if tr.objective != "kd":
        return Check("kd_signal", "skip", "train.objective is not kd")
    signal = tr.kd_signal if tr.kd_signal != "auto" else \
        "logits" if tr.teacher_model else "labels" if ctx.task.labels else "topk"  # as train/teacher.auto_signal
    if signal == "logits":
        return Check("kd_signal", "skip", "kd_signal logits: train.teacher_model's logits, not the teacher's answers")
    field = "label_probs" if signal == "labels" else "logprobs"
    if any(getattr(r, field) for r in ctx.train_records()):
        return Check("kd_signal", "ok", f"train.jsonl records carry {field}")
    try:
        cls = load_plugin("teachers", t.type)
    except PotstillError:  # the teacher check names it
        return Check("kd_signal", "skip", "teacher.type not found (see teacher)")
    if signal == "labels" and cls.writes_label_probs:
        return Check("kd_signal", "ok", f"a {t.type} teacher gives each answer's label probabilities")
    what = f"train.objective kd with kd_signal {signal}" + (" (auto)" if tr.kd_signal == "auto" else "")
    why = cls.logprobs_problem(t)
    if why:
        return Check("kd_signal", "fail", f"{what} learns from the teacher's log-probabilities, but {why}: generate "
                     "would pay for answers train then refuses; use kd_signal logits with train.teacher_model (a "
                     "local teacher of the student's tokenizer) or train.objective sft")
    if not t.logprobs:
        return Check("kd_signal", "fail", f"{what} learns from the teacher's log-probabilities, and teacher.logprobs "
                     "is 0: generate would ask for none; set teacher.logprobs 5 (or train.objective sft)")
    return Check("kd_signal", "ok", f"teacher.logprobs {t.logprobs} for kd_signal {signal}")
