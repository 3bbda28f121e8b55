"""Guided decoding under a regular expression: vLLM's ``guided_regex``, and ``guided_choice`` as the
alternation of its strings. A row's guide travels as a dict, as a JSON Schema does
(``regex_guide``), and ``models.json_guide`` reads it with ``RegexPrefix`` instead of
``models.json_constraint.JsonPrefix``.
"""

from __future__ import annotations

import re
from typing import Sequence

from potstill.models.json_constraint import WS
from potstill.models.utf8_tail import probes

# A guide that is a regular expression, not a JSON Schema: ``{REGEX: pattern}`` (``regex_guide``).
REGEX = "x-potstill-regex"


def regex_guide(pattern: str) -> dict:
    """The guide of answers that ``pattern`` matches whole, in the form a schema travels in."""
    return {REGEX: pattern}


def choice_pattern(choices: Sequence[str]) -> str:
    """A pattern matched whole by exactly ``choices``."""
    return "(?:" + "|".join(re.escape(c) for c in choices) + ")"


def pattern_problem(pattern: str) -> str | None:
    """Why ``pattern`` cannot guide decoding (the ``regex`` module cannot compile it), or None."""
    import regex

    try:
        regex.compile(pattern)
    except regex.error as e:
        return str(e)
    return None


class RegexPrefix:
    """Whether a text is the start of one that ``pattern`` matches whole (``regex``'s partial
    matching: a text that partly matches has every prefix partly match, so a delta is one check).
    ``done``: the text matches and no printable ASCII character, whitespace or character beyond ASCII
    (``opens``) could follow it, so only the end may (a choice spelled out)."""

    _NEXT = [chr(i) for i in range(32, 127)] + list(WS)

    def __init__(self, pattern: str):
        import regex

        self.rx, self.text, self.ok = regex.compile(pattern), "", True

    def copy(self) -> "RegexPrefix":
        new = RegexPrefix.__new__(RegexPrefix)
        new.rx, new.text, new.ok = self.rx, self.text, self.ok
        return new

    def feed(self, text: str) -> bool:
        self.ok = self.ok and self.rx.fullmatch(self.text + text, partial=True) is not None
        if self.ok:
            self.text += text
        return self.ok

    def can_end(self) -> bool:
        return self.ok and self.rx.fullmatch(self.text) is not None

    def opens(self, lo: int, hi: int) -> bool:
        """Whether a character from code point ``lo`` to ``hi`` may come next, as far as
        ``utf8_tail.probes`` find: partial matching takes a text, not a set of characters."""
        return self.ok and any(self.rx.fullmatch(self.text + c, partial=True) for c in probes(lo, hi, self.rx.pattern))

    @property
    def done(self) -> bool:
        return self.can_end() and not any(self.rx.fullmatch(self.text + c, partial=True) for c in self._NEXT) \
            and not self.opens(0x80, 0x10FFFF)
