"""Classification: a fixed label set; the teacher's distribution over labels is a soft label.

That distribution is over label *names*, not tokens, so any teacher distils into any student.
"""

from __future__ import annotations

import re
from typing import Any

from potstill.config import TaskConfig
from potstill.errors import PotstillError
from potstill.records import Record
from potstill.tasks.base import Task


def _norm(s: str) -> str:
    return re.sub(r"[^\w\s-]", "", s).strip().lower()


class ClassificationTask(Task):
    name = "classification"

    def __init__(self, cfg: TaskConfig):
        super().__init__(cfg)
        if len(cfg.labels) < 2:
            raise PotstillError("task.labels needs at least two labels for a classification task")
        self.labels = list(cfg.labels)
        self._by_norm = {_norm(label): label for label in self.labels}
        if len(self._by_norm) != len(self.labels):
            raise PotstillError("task.labels has labels that differ only in case or punctuation")

    def target(self, record: Record) -> str:
        label = self.parse(record.output or "")
        assert label is not None, "only valid records are trained on"
        return label

    def parse(self, output: str) -> str | None:
        """The label the output names: exact (case-insensitive) or its first line/word."""
        text = _norm(output)
        if text in self._by_norm:
            return self._by_norm[text]
        first_line = _norm(output.strip().splitlines()[0]) if output.strip() else ""
        if first_line in self._by_norm:
            return self._by_norm[first_line]
        first_word = first_line.split(" ")[0] if first_line else ""
        return self._by_norm.get(first_word)

    def validate(self, parsed: Any) -> str | None:
        return None if parsed in self.labels else "answer outside the label set"
