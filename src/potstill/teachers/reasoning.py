"""Which teachers think before they answer, and the output budget that thinking needs.

A reasoning model (OpenAI's o-series and gpt-5, any teacher asked for a ``reasoning_effort``)
writes hidden reasoning first and counts it in its output budget (``max_completion_tokens``): an
answer whose reasoning used the budget up comes back as "" stopped at the limit, billed.
"""

from __future__ import annotations

from typing import Any

# What a reasoning teacher's output budget should hold at least besides its answer: OpenAI's o4-mini
# thinks a few hundred tokens at low effort before a one-word label, thousands at medium or high.
# OpenAI advises reserving 25,000 when starting out; below 1024 a label task's answers come back empty.
REASONING_BUDGET = 1024


def reasons(t: Any) -> bool:
    """Whether teacher config ``t`` thinks before it answers, spending up to ``max_tokens`` on any answer."""
    from potstill.teachers.openai_teacher import reasoning_model

    return bool(getattr(t, "reasoning_effort", None)) or (t.type == "openai" and reasoning_model(t.model or ""))


def spent_before_answering(output: str | None, stop: Any) -> bool:
    """Whether an answer is "" stopped at the output limit: no word written, the budget spent (on reasoning)."""
    return stop in ("length", "max_tokens") and not (output or "").strip()
