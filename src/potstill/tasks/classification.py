"""Classification: a fixed label set; the teacher's distribution over labels is a soft label.

That distribution is over label *names*, not tokens, so any teacher distils into any student.
"""

from __future__ import annotations

import json
import re
import unicodedata
from typing import Any

from rich.markup import escape

from potstill.config import TaskConfig
from potstill.errors import PotstillError
from potstill.progress import say
from potstill.records import Record
from potstill.tasks.base import GoldTally, Task


def _folded(s: str) -> str:
    """``s`` as labels are matched: compatibility-composed (NFKC: an accent typed as its own mark is
    the accented letter, a Japanese IME's full-width "Ｊａ" is "Ja"), invisible format characters (a
    zero-width space) and emoji variation selectors dropped ("❤" and "❤️", U+FE0F, are one heart, which
    a teacher adds or drops at will), and case-folded ("STRASSE" is "Straße"), as Unicode's
    NFKC_Casefold does it."""
    s = "".join(ch for ch in unicodedata.normalize("NFKC", s)
                if unicodedata.category(ch) != "Cf" and not "\ufe00" <= ch <= "\ufe0f")
    return unicodedata.normalize("NFKC", s.casefold())


def _norm(s: str) -> str:
    # Folded first: "\w" keeps "é" but drops a combining accent, so an NFD "Négatif" lost its accent.
    return re.sub(r"[^\w\s-]", "", _folded(s)).strip()


def _text(s: str) -> str:
    """A label's own text, as it is matched where its normal form names no label alone: folded
    (``_folded``), spaces folded, its punctuation kept: "C", "C++" and "C#" stay three labels, "yes"
    and "yes\u200b" are one."""
    return " ".join(_folded(s).split())


# An answer may wrap the label as the prompt lists it (a JSON string, "C++") or as Markdown (**C++**,
# `C++`), or end it with a full stop: matched by text, that wrapping comes off, as _norm drops it.
_WRAP = "\"'`*\u201c\u201d\u2018\u2019"


def _texts(s: str) -> tuple[str, str]:
    t = _text(s)
    return t, t.strip(_WRAP).removesuffix(".").strip(_WRAP)


# What a sentence adds around a label it names (Java: ..., "C#, since ...", "(C++)"): _norm drops it from
# a label named by its normal form, so a label named by its text is looked up without it too.
_TRAIL = ":,;!?."
_BRACKETS = ("()", "[]", "{}", "<>")


def _trimmed(s: str) -> list[str]:
    """``s`` (as ``_texts`` leaves it) less enclosing brackets or trailing ``_TRAIL`` characters, one
    step at a time and in either order: every text it may stand for, none empty."""
    first = _texts(s)[1]
    seen, todo = [first], [first]
    while todo:
        t = todo.pop()
        steps = [t[:-1]] if t and t[-1] in _TRAIL else []
        steps += [t[1:-1] for a, b in _BRACKETS if len(t) > 2 and t[0] == a and t[-1] == b]
        for step in steps:
            step = step.strip().strip(_WRAP)
            if step and step not in seen:
                seen.append(step)
                todo.append(step)
    return seen[1:]


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
        # A label's normal form names it where no other label shares it. One made only of punctuation
        # ("+", "*") normalises to nothing, as does an empty answer or "...", and one whose normal form
        # another shares ("c" for "C", "C++" and "C#") would be read as the other: such labels are
        # named by their own text alone, so no empty answer reads as "+" and "C++" is not "C".
        groups: dict[str, list[str]] = {}
        for label in self.labels:
            groups.setdefault(_norm(label), []).append(label)
        self._by_norm = {norm: group[0] for norm, group in groups.items() if norm and len(group) == 1}
        by_text: dict[str, list[str]] = {}
        for label in self.labels:
            if self._by_norm.get(_norm(label)) != label:
                by_text.setdefault(_text(label), []).append(label)
        if "" in by_text:  # made only of invisible characters: an empty answer would name it
            raise PotstillError(f"task.labels has an empty label ({by_text[''][0]!r}): an empty answer would name it")
        same = [", ".join(map(repr, group)) for group in by_text.values() if len(group) > 1]
        if same:
            raise PotstillError(f"task.labels has labels that differ only in case, width, spaces, emoji variation "
                                f"selectors or invisible characters ({'; '.join(same)}): an answer could not tell "
                                "them apart; keep one of each")
        self._by_text = {text: group[0] for text, group in by_text.items()}

    def target(self, record: Record) -> str:
        label = self.parse(record.output or "")
        assert label is not None, "only valid records are trained on"
        return label

    def _named(self, text: str, norm: str) -> str | None:
        """The label ``text`` (``norm``, its normal form) is: by its normal form where that names one
        label, else by its own text: "+" is the label "+", "?" or "" no label, "C++" is "C++" beside "C"."""
        if norm in self._by_norm:
            return self._by_norm[norm]
        label = next((self._by_text[key] for key in _texts(text) if key in self._by_text), None)
        if label is not None:
            return label
        # "C++:" or "(C#)": where the text less its brackets and trailing punctuation names one label
        # only. Never one the label's own characters make ("C++" stays "C++": "+" is not trimmed);
        # with labels "Yes" and "Yes!" an answer "Yes!," could be either, and is none.
        named = {self._by_text[key] for key in _trimmed(text) if key in self._by_text}
        return named.pop() if len(named) == 1 else None

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

    def gold_tally(self, path: Any) -> GoldTally:
        """Gold labels become the label set's spelling ("Sports" -> "sports"; labels that differ
        only in case are refused at init, so the match is unambiguous). A label outside the set
        is moved to ``meta["unknown_label"]`` (the record has no gold) and warned about; above
        ``max_unknown`` of the gold labels, the inputs are refused."""
        return _LabelTally(self, path)

    def validate(self, parsed: Any) -> str | None:
        return None if parsed in self.labels else "answer outside the label set"


class _LabelTally(GoldTally):
    """``ClassificationTask.gold_tally``: the gold labels counted as they are respelled or set aside."""

    def __init__(self, task: ClassificationTask, path: Any):
        self.task, self.path = task, path
        self.labelled, self.unknown, self.fixed, self.first = 0, 0, 0, ""

    def add(self, lineno: int, r: Record) -> None:
        if r.label is None:
            return
        self.labelled += 1
        if r.label in self.task.labels:
            return
        canon = self.task._named(r.label, _norm(r.label))
        if canon is not None:
            r.label, self.fixed = canon, self.fixed + 1
            return
        self.unknown += 1
        self.first = self.first or f"{self.path}:{lineno}: {r.label!r}"
        r.meta["unknown_label"], r.label = r.label, None

    def finish(self, max_unknown: float) -> None:
        labels, path = self.task.labels, self.path
        share = self.unknown / self.labelled if self.labelled else 0.0
        shown = quoted(labels[:8]) + (", ..." if len(labels) > 8 else "")
        what = (f"{self.unknown} of {self.labelled} gold labels ({share:.0%}) are not in task.labels "
                f"({shown}); first at {self.first}")
        if share > max_unknown:
            raise PotstillError(f"{what}. Fix the labels or task.labels (data.max_unknown_gold={max_unknown:g})")
        if self.fixed:
            say(escape(f"{path}: {self.fixed} gold labels matched task.labels only up to case or punctuation; "
                       "using the label set's spelling"))
        if self.unknown:
            say(f"[yellow]warning:[/yellow] {escape(what)}; those records count as having no gold")
