"""Free text: any non-empty output is valid; agreement is exact match after whitespace folding."""

from __future__ import annotations

from typing import Any

from potstill.tasks.base import Task


class FreeTextTask(Task):
    name = "freetext"

    def parse(self, output: str) -> str:
        return " ".join(output.split())

    def agree(self, a: Any, b: Any) -> float:
        return float(str(a).lower() == str(b).lower())
