"""The Task protocol every task plugin implements."""

from __future__ import annotations

import unicodedata
from typing import Any, Iterable

from potstill.config import TaskConfig
from potstill.records import Record


def nfc(text: str) -> str:
    """``text`` in Unicode's composed form, for comparing only: "é" typed as "e" and a combining accent
    (NFD, as macOS file names and some tokenizers' decoding give it) is the one character "é"."""
    return unicodedata.normalize("NFC", text)


def folded(text: str) -> str:
    """Free text as answers compare: composed (``nfc``), white space folded, lower case."""
    return " ".join(nfc(text).split()).lower()


class GoldTally:
    """The gold of records read from one file, checked as they come: ``add`` normalises a record's
    gold in place and counts it, ``finish`` judges the counts (raises, or warns). A second tally's
    ``add`` over the same records normalises them the same way (its counts left unjudged)."""

    def add(self, lineno: int, record: Record) -> None:
        pass

    def finish(self, max_unknown: float) -> None:
        pass


class Task:
    """Base class: chat rendering shared by all tasks; subclasses parse, validate and score."""

    name = "task"
    #: Classification tasks score a fixed label set instead of generating free text.
    labels: list[str] = []

    def __init__(self, cfg: TaskConfig):
        self.cfg = cfg

    def messages(self, record: Record) -> list[dict[str, Any]]:
        """The chat the student (or a chat teacher) sees: the instruction, then the user's messages."""
        return [{"role": "system", "content": self.cfg.instruction}, *record.messages]

    def target(self, record: Record) -> str:
        """The completion to train on: the teacher's output, normalised."""
        assert record.output is not None
        return record.output

    def answer_output(self, answer: dict[str, Any]) -> str | None:
        """The text a teacher's answer (``Response.to_json()``, maybe from the ledger) gives the record."""
        return answer.get("output")

    def parse(self, output: str) -> Any:
        return output.strip()

    def validate(self, parsed: Any) -> str | None:
        """None when valid, else the reason (kept beside the record, never trained on)."""
        return None if parsed not in (None, "") else "empty output"

    def agree(self, a: Any, b: Any) -> float:
        """Agreement in [0, 1] between two parsed outputs (student vs teacher, or vs gold)."""
        return float(a == b)

    def check_gold(self, numbered: Iterable[tuple[int, Record]], path: Any, max_unknown: float) -> None:
        """Check (and normalise in place) the gold of records read from ``path``: each through
        ``gold_tally``'s ``add``, then its ``finish``."""
        tally = self.gold_tally(path)
        for lineno, r in numbered:
            tally.add(lineno, r)
        tally.finish(max_unknown)

    def gold_tally(self, path: Any) -> GoldTally:
        """``check_gold`` one record at a time, for inputs read in passes and never held whole
        (``inputs.InputFile``); tasks without a label set have nothing to check."""
        return GoldTally()

    def gold(self, record: Record) -> Any:
        """The gold answer, parsed, when the record has one."""
        if record.label is not None:
            return self.parse(record.label)
        if isinstance(record.reference, str):
            # Read as a label is: an extraction reference written as JSON text is the object it names.
            return self.parse(record.reference)
        return record.reference
