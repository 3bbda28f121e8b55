"""preflight's checks of the teacher's settings against what the run asks of it, before generate pays.

* ``output_budget``: a reasoning teacher (an OpenAI o-series or gpt-5 model, or any teacher with
  ``teacher.reasoning_effort``) counts its hidden reasoning in ``teacher.max_tokens``; below
  ``REASONING_BUDGET`` most answers come back empty, cut at the limit, and billed (a warning: a
  ``minimal`` effort may answer within less).
"""

from __future__ import annotations

from typing import Any

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
