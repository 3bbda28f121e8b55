"""Which teachers think before they answer, and the output budget that thinking needs.

A reasoning model (OpenAI's o-series and gpt-5, any teacher asked for a ``reasoning_effort``)
writes hidden reasoning first and counts it in its output budget (``max_completion_tokens``): an
answer whose reasoning used the budget up comes back as "" stopped at the limit, billed.
"""

from __future__ import annotations

import re
from typing import Any

# OpenAI's reasoning models by id: o1, o3, o4-mini, the gpt-5 family but gpt-5-chat, fine-tunes of them.
REASONING = re.compile(r"^(ft:)?(o\d|gpt-5(?!-chat))")

# What a reasoning teacher's output budget should hold at least besides its answer: OpenAI's o4-mini
# thinks a few hundred tokens at low effort before a one-word label, thousands at medium or high.
# OpenAI advises reserving 25,000 when starting out; below 1024 a label task's answers come back empty.
REASONING_BUDGET = 1024


def reasoning_model(model: str) -> bool:
    """An OpenAI reasoning model by its id (``o3-mini``, ``gpt-5.1``, ``ft:o4-mini-...``)."""
    return bool(REASONING.match(model))


def reasoning_teacher(t: Any) -> bool:
    """Whether teacher config ``t`` is a reasoning model, as ``teacher.reasoning`` says (auto: an
    OpenAI-compatible teacher whose model id is one of OpenAI's; true for an Azure deployment or a
    proxy's alias of one): sent ``max_completion_tokens`` and no temperature, asked for no logprobs."""
    said = getattr(t, "reasoning", "auto")
    return said if isinstance(said, bool) else t.type == "openai" and reasoning_model(t.model or "")


def reasons(t: Any) -> bool:
    """Whether teacher config ``t`` thinks before it answers, spending up to ``max_tokens`` on any answer."""
    return bool(getattr(t, "reasoning_effort", None) or getattr(t, "thinking_budget", None)) or reasoning_teacher(t)


def spent_before_answering(output: str | None, stop: Any) -> bool:
    """Whether an answer is "" stopped at the output limit: no word written, the budget spent (on reasoning)."""
    return stop in ("length", "max_tokens") and not (output or "").strip()
