"""preflight's checks of the teacher's settings against what the run asks of it, before generate pays.

* ``output_budget``: a reasoning teacher (an OpenAI o-series or gpt-5 model, or any teacher with
  ``teacher.reasoning_effort``) counts its hidden reasoning in ``teacher.max_tokens``; below
  ``REASONING_BUDGET`` most answers come back empty, cut at the limit, and billed (a warning: a
  ``minimal`` effort may answer within less).
"""

from __future__ import annotations

from typing import Any

from potstill.preflight import Check

# What a reasoning teacher's output budget should hold at least: its reasoning (OpenAI's o4-mini
# thinks a few hundred tokens at low effort before a one-word label, thousands at medium or high)
# plus the answer. OpenAI advises reserving 25,000 tokens when starting out; 1024 is the floor below
# which a label task's answers already come back empty.
REASONING_BUDGET = 1024


def reasons(t: Any) -> bool:
    """A teacher that thinks before it answers spends up to ``max_tokens`` on any answer."""
    from potstill.teachers.openai_teacher import reasoning_model

    return bool(getattr(t, "reasoning_effort", None)) or (t.type == "openai" and reasoning_model(t.model or ""))


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
