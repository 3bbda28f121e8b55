"""Free text: any non-empty output is valid, or, with ``task.grammar``, one the grammar derives
(its surrounding white space stripped); agreement is exact match after folding white space, case
and Unicode's decomposed accents (``folded``)."""

from __future__ import annotations

from typing import Any

from potstill.config import TaskConfig
from potstill.errors import PotstillError
from potstill.tasks.base import Task, folded


class FreeTextTask(Task):
    name = "freetext"

    def __init__(self, cfg: TaskConfig):
        super().__init__(cfg)
        if cfg.json_schema is not None:
            raise PotstillError("task.json_schema: a freetext task has no JSON Schema; use task.type extraction, "
                                "or task.grammar for text of a given form")

    def parse(self, output: str) -> str:
        # Under a grammar the text is kept as written (its white space may be the grammar's); else folded.
        return output.strip() if self.cfg.grammar is not None else " ".join(output.split())

    def validate(self, parsed: Any) -> str | None:
        if parsed in (None, "") and self.cfg.grammar is None:
            return "empty output"
        if self.cfg.grammar is None:
            return None
        from potstill.models.grammar_constraint import GrammarPrefix

        reader, text = GrammarPrefix(self.cfg.grammar), str(parsed)
        for i, c in enumerate(text):
            if not reader.feed(c):
                return f"not derived by task.grammar: {_shown(text[max(0, i - 30):i])} cannot go on with {c!r} " \
                       f"(character {i + 1})"
        if not reader.can_end():
            return f"not derived by task.grammar: it ends early, after {_shown(text[-30:])}" if text else \
                "not derived by task.grammar: empty output"
        return None

    def agree(self, a: Any, b: Any) -> float:
        return float(folded(str(a)) == folded(str(b)))


def _shown(text: str) -> str:
    return repr(text) if text else "the start"
