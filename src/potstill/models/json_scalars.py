"""The string and number frames of ``models.json_constraint``'s reader: a string held to its
``enum`` / ``const`` choices, ``minLength`` / ``maxLength``, an anchored ``pattern`` or a ``format``,
and the values an array's uniqueItems excludes; a number held to its ``type``, its bounds, a
``multipleOf`` and its ``enum``, growing only toward a value it may still become.

Split from ``json_constraint`` (the value, object, array and literal frames and the parallel
readings stay there); each frame's ``step(c, p)`` takes the reading ``p`` it belongs to.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import TYPE_CHECKING, Any

from potstill.models.json_schema_parts import (FORMATS, anchored, exact, in_bounds, int_bounds, num_bounds,
                                               number_choices)
from potstill.models.utf8_tail import probes

if TYPE_CHECKING:
    from potstill.models.json_constraint import _Parse

MAX_NUMBER = 32  # a number's characters, capped: unbounded, a model preferring one more digit fills its budget
# Characters tried along an excluded string's prefixes: whether the text can grow into another.
_PROBE = [chr(i) for i in range(32, 127)]


_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}


class _String:
    """After the opening quote; ``choices``: the strings it may become (None: any); ``schema``: its
    ``minLength``, ``maxLength`` and an anchored ``pattern`` (``^...``, the form formats such as
    dates take; an unanchored one is left to validation, since text can always be added to match)."""

    def __init__(self, choices: list[str] | None, key_of: Any = None, schema: dict | None = None,
                 exclude: frozenset = frozenset()):
        self.exclude = frozenset(x[1] for x in exclude if x[0] == "s")  # strings it may not be
        if choices is not None and self.exclude:
            choices = [x for x in choices if x not in self.exclude]
        self.choices, self.key_of = choices, key_of
        self.text = ""
        self.esc: str | None = None  # "" after a backslash, "uXXX" while reading a \\u escape
        schema = schema or {}
        self.min = schema.get("minLength") if isinstance(schema.get("minLength"), int) else 0
        self.max = schema.get("maxLength") if isinstance(schema.get("maxLength"), int) else None
        pattern, fmt = schema.get("pattern"), schema.get("format")
        self.patterns = []
        if isinstance(pattern, str) and pattern.startswith("^"):
            if not (pattern.endswith("$") and not pattern.endswith("\\$")):
                pattern = f"(?:{pattern})(?s:.*)"  # anchored at its start only: anything may follow a match
            self.patterns.append(anchored(pattern))
        if fmt in FORMATS:
            self.patterns.append(anchored(FORMATS[fmt]))
        self.patterns = [x for x in self.patterns if x is not None]

    def key(self) -> tuple:
        return ("s", None if self.choices is None else tuple(self.choices), self.key_of is not None,
                self.min, self.max, tuple(id(x) for x in self.patterns), self.text, self.esc, self.exclude)

    def _fits(self, text: str) -> bool:
        return self._plain(text) and (not self.exclude or self.viable(text))

    def _plain(self, text: str) -> bool:
        """Whether ``text`` can still grow into a string the schema takes (exclusions aside)."""
        if self.max is not None and len(text) > self.max:
            return False
        if any(not x.fullmatch(text, partial=True) for x in self.patterns):
            return False
        return self.choices is None or any(ch.startswith(text) for ch in self.choices)

    def viable(self, text: str) -> bool:
        """Whether ``text`` can still grow into a string the schema takes that is not excluded: where
        no excluded string starts with it, whether it fits; else whether it may end here or some
        character carries it on (only along the excluded strings' prefixes is more than one step
        looked at)."""
        if not self._plain(text):
            return False
        if not any(x.startswith(text) for x in self.exclude):
            return True
        if text not in self.exclude and len(text) >= self.min and all(x.fullmatch(text) for x in self.patterns) \
                and (self.choices is None or text in self.choices):
            return True
        return any(self.viable(text + c) for c in _PROBE)

    def _next_chars(self) -> set[str] | None:
        """The characters a choice may take next (None: any)."""
        if self.choices is None:
            return None
        n = len(self.text)
        return {ch[n] for ch in self.choices if ch.startswith(self.text) and len(ch) > n}

    def opens(self, lo: int, hi: int) -> bool:
        """Whether a character from code point ``lo`` to ``hi`` (beyond ASCII, never a control
        character) may come next: any where nothing but a length holds it; else one of the choices'
        next characters, or one of ``utf8_tail.probes`` under a pattern or exclusions."""
        if self.esc is not None or self.max is not None and len(self.text) >= self.max:
            return False
        if self.choices is not None:
            tried = [c for c in self._next_chars() if lo <= ord(c) <= hi]
        elif not self.patterns and not self.exclude:
            return True
        else:
            tried = probes(lo, hi, "".join(x.pattern for x in self.patterns))
        return any(self._fits(self.text + c) for c in tried)

    def step(self, c: str, p: "_Parse") -> bool:
        if self.esc is not None:
            if self.esc == "":
                if c == "u" and not self.patterns:  # under a pattern, \\u could open an escape no character completes
                    self.esc = "u"
                    return True
                if c not in _ESCAPES or not self._fits(self.text + _ESCAPES[c]):
                    return False
                self.text += _ESCAPES[c]
                self.esc = None
                return True
            if c not in "0123456789abcdefABCDEF":
                return False
            nexts = self._next_chars()
            # A \u escape of an enum's string or a key grows only toward a character one of them holds.
            if nexts is not None and not any(f"{ord(n):04x}".startswith((self.esc[1:] + c).lower()) for n in nexts):
                return False
            self.esc += c
            if len(self.esc) == 5:
                ch = chr(int(self.esc[1:], 16))
                if not self._fits(self.text + ch):
                    return False
                self.text += ch
                self.esc = None
            return True
        if c == '"':
            if self.choices is not None and self.text not in self.choices or len(self.text) < self.min \
                    or self.text in self.exclude:
                return False
            if any(not x.fullmatch(self.text) for x in self.patterns):
                return False
            p.pop()
            return True
        if c == "\\":
            # Every prefix accepted must still lead somewhere: an escape only where what it may write
            # fits (a choice's next character, the pattern, the length).
            nexts = self._next_chars()
            if nexts is not None and not any(n in _ESCAPES.values() or not n.isascii() or ord(n) < 0x20 for n in nexts):
                return False
            if self.patterns and not any(self._fits(self.text + v) for v in _ESCAPES.values()):
                return False
            if self.max is not None and len(self.text) >= self.max:
                return False
            self.esc = ""
            return True
        if ord(c) < 0x20 or not self._fits(self.text + c):
            return False
        self.text += c
        return True


class _Number:
    """A number, by a DFA over JSON's grammar: -?(0|[1-9]\\d*)(\\.\\d+)?([eE][+-]?\\d+)?. Under bounds
    its text only grows toward a value between them (an integer's, ``int_bounds``; a number's,
    ``num_bounds``, written without an exponent, so that what the text can still become is an
    interval)."""

    ACCEPT = {"zero", "int", "frac", "expdig"}

    def __init__(self, integer: bool, schema: dict | None = None, exclude: frozenset = frozenset()):
        self.integer = integer
        self.exclude = frozenset(x[1] for x in exclude if x[0] == "n")  # values it may not be (Fractions)
        self.state = "start"
        self.length = 0
        self.bounds = int_bounds(schema or {}) if integer else None  # (low, high), both closed
        step = (schema or {}).get("multipleOf")
        # An integer's multipleOf (a whole one): its digits only grow toward a multiple between the bounds.
        self.multiple = step if integer and isinstance(step, int) and not isinstance(step, bool) and step > 0 else None
        if self.multiple is not None and self.bounds is None:
            self.bounds = (-math.inf, math.inf)
        self.dec = None if integer else num_bounds(schema or {})
        # A number's multipleOf, exact (0.01 as written): its text grows only toward a multiple, without an exponent.
        self.step_dec = None if integer or isinstance(step, bool) or not isinstance(step, (int, float)) \
            else exact(step)
        if self.step_dec is not None and self.step_dec <= 0:
            self.step_dec = None
        if self.step_dec is not None and self.dec is None:
            self.dec = (-math.inf, False, math.inf, False)
        # An enum's or a const's numbers: the text only grows toward one of their spellings.
        self.choices = number_choices(schema or {}, integer)
        if self.choices is not None and self.exclude:
            self.choices = frozenset(x for x in self.choices if Fraction(x) not in self.exclude)
        if self.exclude and integer and self.bounds is None:
            self.bounds = (-math.inf, math.inf)  # so that _reachable steers clear of the excluded values
        self.text = ""

    def key(self) -> tuple:
        return ("n", self.integer, self.bounds, self.multiple, self.dec, self.step_dec, self.choices, self.exclude,
                self.state, self.text)

    def _reachable(self, text: str, state: str) -> bool:
        """Whether an integer written ``text`` so far (in ``state``) can still end between the bounds
        (on a ``multipleOf``, where it has one)."""
        low, high = self.bounds
        if state == "minus":  # "-0" is 0; any other is negative
            if not self.exclude:
                return low <= 0
            return low <= 0 <= high and 0 not in self.exclude or self._left(low, min(high, -1))
        sign = -1 if text.startswith("-") else 1
        v = int(text.lstrip("-"))
        if state == "zero":
            return low <= 0 <= high and 0 not in self.exclude
        for k in range(MAX_NUMBER - len(text) + 1):  # k more digits: v * 10^k .. v * 10^k + 10^k - 1
            a, b = v * 10**k, v * 10**k + 10**k - 1
            lo, hi = (a, b) if sign > 0 else (-b, -a)
            if self._left(max(lo, low), min(hi, high)):  # what is left of it between the bounds
                return True
            if (a > high) if sign > 0 else (-a < low):  # more digits only move it further out
                break
        return False

    def _left(self, x: Any, y: Any) -> bool:
        """Whether [x, y] holds an integer the number may be: a multiple (of 1 without a multipleOf)
        that is not excluded."""
        step = self.multiple or 1
        if x > y:
            return False
        if x == -math.inf:
            return True  # unbounded below: more than any exclusion
        first = -(-int(x) // step) * step
        if first > y:
            return False
        if not self.exclude or y == math.inf or (y - first) // step + 1 > len(self.exclude):
            return True
        return any(w not in self.exclude for w in range(first, int(y) + 1, step))

    def _reachable_dec(self, text: str, state: str) -> bool:
        """The same for a number: what ``text`` can still become is the union of intervals
        [a, b) of magnitudes (mirrored for a negative one), each checked against the bounds."""
        bounds = self.dec
        if state == "minus":
            return in_bounds(bounds, -math.inf, True, 0, False)  # "-0" is 0
        neg, body = text.startswith("-"), text.lstrip("-")

        def meets(a: Any, b: Any) -> bool:
            return in_bounds(bounds, -b, True, -a, False, self.step_dec) if neg \
                else in_bounds(bounds, a, False, b, True, self.step_dec)

        if state == "zero":
            return meets(0, 1)
        if state in ("dot", "frac"):
            whole, _, frac = body.partition(".")
            x = Fraction(int(whole + frac), 10 ** len(frac))
            return meets(x, x + Fraction(1, 10 ** len(frac)))
        v = int(body)
        for k in range(MAX_NUMBER - len(text) + 1):  # k more digits before any point
            a, b = v * 10**k, (v + 1) * 10**k
            if meets(a, b):
                return True
            if (a > bounds[2]) if not neg else (-a < bounds[0]):
                break
        return False

    def _ends(self) -> bool:
        """Whether the number written so far is a whole one between the bounds."""
        if self.state not in self.ACCEPT or self.choices is not None and self.text not in self.choices:
            return False
        if self.exclude and Fraction(self.text) in self.exclude:
            return False
        if self.dec is not None:
            x = Fraction(self.text)
            return in_bounds(self.dec, x, False, x, False) and (self.step_dec is None or x % self.step_dec == 0)
        return self.bounds is None or self.bounds[0] <= int(self.text) <= self.bounds[1] \
            and (self.multiple is None or int(self.text) % self.multiple == 0)

    def _next(self, c: str) -> str | None:
        s, digit = self.state, c.isascii() and c.isdigit()
        if s == "start":
            return "minus" if c == "-" else "zero" if c == "0" else "int" if digit else None
        if s == "minus":
            return "zero" if c == "0" else "int" if digit else None
        exp = c in "eE" and not self.integer and self.dec is None
        if s in ("zero", "int"):
            if digit and s == "int":
                return "int"
            if c == "." and not self.integer:
                return "dot"
            return "exp" if exp else None
        if s in ("dot", "frac"):
            if digit:
                return "frac"
            return "exp" if exp and s == "frac" else None
        if s == "exp":
            return "expsign" if c in "+-" else "expdig" if digit else None
        if s in ("expsign", "expdig"):
            return "expdig" if digit else None
        return None

    def step(self, c: str, p: "_Parse") -> bool:
        nxt = self._next(c)
        # Near the cap only a step into a whole number: a number cut at "1." could not end.
        if nxt is not None and (self.length < MAX_NUMBER - 2 or nxt in self.ACCEPT and self.length < MAX_NUMBER) \
                and (self.bounds is None or self._reachable(self.text + c, nxt)) \
                and (self.dec is None or self._reachable_dec(self.text + c, nxt)) \
                and (self.choices is None or any(x.startswith(self.text + c) for x in self.choices)):
            self.state, self.length, self.text = nxt, self.length + 1, self.text + c
            return True
        if not self._ends():
            return False
        p.pop()  # the number ended before c, which belongs to the frame below
        return p.step(c)
