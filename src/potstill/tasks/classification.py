"""Classification: a fixed label set; the teacher's distribution over labels is a soft label.

That distribution is over label *names*, not tokens, so any teacher distils into any student.
"""

from __future__ import annotations

import json
import re
from typing import Any

from rich.markup import escape

from potstill.config import TaskConfig
from potstill.errors import PotstillError
from potstill.progress import say
from potstill.records import Record
from potstill.tasks.base import Task, nfc


def _norm(s: str) -> str:
    # Composed first: "\w" keeps "é" but drops a combining accent, so an NFD "Négatif" lost its accent.
    return re.sub(r"[^\w\s-]", "", nfc(s)).strip().lower()


def quoted(labels: list[str]) -> str:
    """Labels as a reader (a person, a teacher) can split them back: each a JSON string, so the
    label ``crash, bug`` is one label, where ``billing issue, crash, bug`` read as three."""
    return ", ".join(json.dumps(label, ensure_ascii=False) for label in labels)


def _first_word(text: str) -> str:
    words = text.split()
    return words[0] if words else ""


class ClassificationTask(Task):
    name = "classification"

    def __init__(self, cfg: TaskConfig):
        super().__init__(cfg)
        if cfg.grammar is not None:
            raise PotstillError("task.grammar: a classification task answers one of task.labels; a grammar is for "
                                "free text (task.type freetext)")
        if len(cfg.labels) < 2:
            raise PotstillError("task.labels needs at least two labels for a classification task")
        self.labels = list(cfg.labels)
        if any(not label.strip() for label in self.labels):
            raise PotstillError(f"task.labels has an empty label ({self.labels!r}): an empty answer would name it")
        # A label made only of punctuation ("+", "*") normalises to nothing, as does an empty answer or
        # "...": such a label is named by its own text alone, so no empty answer reads as it.
        self._by_norm = {_norm(label): label for label in self.labels if _norm(label)}
        self._by_text = {nfc(label.strip()): label for label in self.labels if not _norm(label)}
        if len(self._by_norm) + len(self._by_text) != len(self.labels):
            raise PotstillError("task.labels has labels that differ only in case or punctuation")

    def target(self, record: Record) -> str:
        label = self.parse(record.output or "")
        assert label is not None, "only valid records are trained on"
        return label

    def _named(self, text: str, norm: str) -> str | None:
        """The label ``text`` (``norm``, its normal form) is: by its normal form where it has one, else
        (made only of punctuation) by its own text: "+" is the label "+", "?" or "" no label."""
        return (self._by_norm.get(norm) if norm else None) or self._by_text.get(nfc(text.strip()))

    def parse(self, output: str) -> str | None:
        """The label the output names: exact (case-insensitive) or its first line/word."""
        line = output.strip().splitlines()[0] if output.strip() else ""
        norm_line = _norm(line)
        for text, norm in ((output, _norm(output)), (line, norm_line),
                           (_first_word(line), _first_word(norm_line))):
            label = self._named(text, norm)
            if label is not None:
                return label
        return None

    def check_gold(self, numbered: list[tuple[int, Record]], path: Any, max_unknown: float) -> None:
        """Gold labels become the label set's spelling ("Sports" -> "sports"; labels that differ
        only in case are refused at init, so the match is unambiguous). A label outside the set
        is moved to ``meta["unknown_label"]`` (the record has no gold) and warned about; above
        ``max_unknown`` of the gold labels, the inputs are refused."""
        unknown, fixed, first = 0, 0, ""
        labelled = [(n, r) for n, r in numbered if r.label is not None]
        for lineno, r in labelled:
            if r.label in self.labels:
                continue
            canon = self._named(r.label, _norm(r.label))
            if canon is not None:
                r.label, fixed = canon, fixed + 1
                continue
            unknown += 1
            first = first or f"{path}:{lineno}: {r.label!r}"
            r.meta["unknown_label"], r.label = r.label, None
        share = unknown / len(labelled) if labelled else 0.0
        shown = quoted(self.labels[:8]) + (", ..." if len(self.labels) > 8 else "")
        what = (f"{unknown} of {len(labelled)} gold labels ({share:.0%}) are not in task.labels "
                f"({shown}); first at {first}")
        if share > max_unknown:
            raise PotstillError(f"{what}. Fix the labels or task.labels (data.max_unknown_gold={max_unknown:g})")
        if fixed:
            say(escape(f"{path}: {fixed} gold labels matched task.labels only up to case or punctuation; "
                       "using the label set's spelling"))
        if unknown:
            say(f"[yellow]warning:[/yellow] {escape(what)}; those records count as having no gold")

    def validate(self, parsed: Any) -> str | None:
        return None if parsed in self.labels else "answer outside the label set"
