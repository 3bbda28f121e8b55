"""Tool calling: each answer is one call of one of ``task.tools``, written ``{name, arguments}``.

An extraction task whose JSON Schema is derived from the tools (``potstill.tool_calls``): the
teacher is asked with the tools, one call required, and its call becomes the record's output; the
student learns that text without the tools in its prompt, and serve answers a request carrying the
same tools with it as OpenAI ``tool_calls``.
"""

from __future__ import annotations

from typing import Any

from potstill.tasks.extraction import ExtractionTask, _Invalid, json_same
from potstill.tool_calls import call_text


class ToolsTask(ExtractionTask):
    """The config derived ``json_schema`` from ``task.tools`` (``TaskConfig``): extraction's parse,
    validation and target apply as they are."""

    name = "tools"

    def answer_output(self, answer: dict[str, Any]) -> str | None:
        """A teacher's answer as the text to learn: its tool call (``call_text``), else its text
        (which then fails the schema: the teacher answered without calling)."""
        calls = answer.get("tool_calls")
        return call_text(calls) if calls else answer.get("output")

    def agree(self, a: Any, b: Any) -> float:
        """0 for another function; else the share of argument fields (union) with equal values."""
        if isinstance(a, _Invalid) or isinstance(b, _Invalid) or not isinstance(a, dict) or not isinstance(b, dict):
            return 0.0
        if a.get("name") != b.get("name"):
            return 0.0
        x, y = a.get("arguments"), b.get("arguments")
        if isinstance(x, dict) and isinstance(y, dict):
            keys = set(x) | set(y)
            return sum(json_same(x.get(k), y.get(k)) for k in keys) / len(keys) if keys else 1.0
        return float(json_same(x, y))
