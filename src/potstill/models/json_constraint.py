"""Whether a text is the start of a JSON document a JSON Schema can accept: what greedy decoding
under a schema (``models.json_guide``) asks of each candidate token, so an extraction student's
answer always parses.

``JsonPrefix`` reads text one character at a time with a stack of frames (an object, an array, a
string, a number, a literal), each knowing its part of the schema: an object takes only the keys
its ``properties`` name when ``additionalProperties`` is false, closes only once its ``required``
keys are in, and gives each value its property's schema; a string of an ``enum`` only grows toward
one of its values; a value takes only the ``type``'s kinds (``integer``: no fraction or exponent);
arrays follow ``items`` (``prefixItems``), ``minItems`` and ``maxItems``; strings ``minLength``,
``maxLength``, an anchored ``pattern`` and the ``format``s of ``FORMATS`` (date, time, date-time,
uuid, ipv4, email, duration, as patterns); an integer's ``minimum`` / ``maximum`` (exclusive ones
too: its digits only grow toward a value between them); local ``$ref``s (``#/$defs/...``, as pydantic writes
nested models) are followed. ``anyOf`` / ``oneOf`` (pydantic's ``Optional[X]`` and unions) take the
branch the value's first character picks (``n``: the null branch, ``{``: the object one); where
several branches of that kind remain, the value is held to the kind alone (strings to the union of
their ``enum``s). Keywords it does not follow (an unanchored ``pattern``, other ``format``s, a
non-integer's ``minimum``, ``allOf``, ``not``, the choice between two object branches, ...) are left
to the task's validation of the finished answer, which may then still fail them, as without the
constraint.

``models.json_guide`` decodes under it, a token at a time.
"""

from __future__ import annotations

import copy
import math
from typing import Any

WS = " \t\n\r"
# A run of whitespace between tokens, and a number, are capped: unbounded, a model that prefers
# one more space (or digit) would fill its whole budget with them. 16 covers indent=4 to depth 4.
MAX_WS = 16
MAX_NUMBER = 32
_TYPES = ("object", "array", "string", "number", "integer", "boolean", "null")


def _resolve(schema: Any, root: dict) -> dict:
    """``schema`` with local ``$ref``s followed (``#/$defs/Name``, ``#/definitions/Name``)."""
    for _ in range(32):
        if not isinstance(schema, dict) or "$ref" not in schema:
            break
        ref = schema["$ref"]
        if not isinstance(ref, str) or not ref.startswith("#/"):
            return {}  # a remote ref: unconstrained here, validated at the end
        target: Any = root
        for part in ref[2:].split("/"):
            target = target.get(part.replace("~1", "/").replace("~0", "~"), {}) if isinstance(target, dict) else {}
        schema = target
    return schema if isinstance(schema, dict) else {}


def _branches(schema: dict, root: dict, depth: int = 0) -> list[dict] | None:
    """The alternatives of an ``anyOf`` / ``oneOf`` (nested ones flattened, ``$ref``s followed), or
    None where ``schema`` has neither (or sits under ``allOf`` / ``not`` / ``if``, left unconstrained)."""
    if any(k in schema for k in ("allOf", "not", "if")):
        return None
    alts = schema.get("anyOf", schema.get("oneOf"))
    if not isinstance(alts, list) or not alts or depth > 8:
        return None
    out: list[dict] = []
    for a in alts:
        a = _resolve(a, root)
        inner = _branches(a, root, depth + 1)
        if inner is None and any(k in a for k in ("anyOf", "oneOf", "allOf", "not", "if")):
            return None  # a branch of its own that is not followed: the whole value is left open
        out.extend(inner if inner is not None else [a])
    return out


def _first_kind(c: str) -> str | None:
    """The kind of value a first character starts (``number`` for a digit or minus)."""
    return {"{": "object", "[": "array", '"': "string", "t": "boolean", "f": "boolean", "n": "null"}.get(c) \
        or ("number" if c == "-" or c.isascii() and c.isdigit() else None)


def _branch_for(alts: list[dict], c: str) -> dict | None:
    """The schema a value under ``alts`` takes once its first character is ``c``: the one branch
    that allows that kind, or the kind alone where several do (strings: their enums joined, where
    each has one); None where none does."""
    kind = _first_kind(c)
    if kind is None:
        return None
    fit = [a for a in alts if kind in _kinds(a) or kind == "number" and "integer" in _kinds(a)]
    if len(fit) <= 1:
        return fit[0] if fit else None
    if kind == "number":
        return {"type": "number" if any("number" in _kinds(a) for a in fit) else "integer"}
    if kind == "string":
        choices = [_string_choices(a) for a in fit]
        if all(ch is not None for ch in choices):
            return {"enum": sorted({x for ch in choices for x in ch})}
    return {"type": kind}


def _kinds(schema: dict) -> set[str]:
    """The JSON kinds a value under ``schema`` may take (all where the schema does not say)."""
    if any(k in schema for k in ("anyOf", "oneOf", "allOf", "not", "if")):
        return set(_TYPES)
    t = schema.get("type")
    if isinstance(t, str):
        kinds = {t}
    elif isinstance(t, list):
        kinds = {x for x in t if isinstance(x, str)}
    elif "enum" in schema or "const" in schema:
        values = schema["enum"] if "enum" in schema else [schema["const"]]
        kinds = {_kind(v) for v in values if _kind(v)}
    elif "properties" in schema or "required" in schema or "additionalProperties" in schema:
        kinds = {"object"}
    elif "items" in schema or "prefixItems" in schema:
        kinds = {"array"}
    else:
        kinds = set(_TYPES)
    return kinds or set(_TYPES)


def _kind(v: Any) -> str | None:
    if isinstance(v, bool):
        return "boolean"
    if v is None:
        return "null"
    if isinstance(v, int):
        return "integer"
    if isinstance(v, float):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    if isinstance(v, dict):
        return "object"
    return None


_PATTERNS: dict[str, Any] = {}
_DATE = r"\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])"
_TIME = r"([01]\d|2[0-3]):[0-5]\d:([0-5]\d|60)(\.\d+)?([Zz]|[+-]([01]\d|2[0-3]):[0-5]\d)?"
_BYTE = r"(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
# String formats as anchored patterns (those OpenAI's strict mode lists, less hostname and ipv6, and
# what pydantic writes for date, datetime, time, UUID and EmailStr fields). The UTC offset of a time
# is optional, as pydantic reads it; the email pattern is loose (no quoted local parts), and a
# duration may be a bare "P" (partial matching takes no lookahead).
FORMATS = {"date": f"^{_DATE}$", "time": f"^{_TIME}$", "date-time": f"^{_DATE}[Tt ]{_TIME}$",
           "uuid": r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$",
           "ipv4": rf"^({_BYTE}\.){{3}}{_BYTE}$", "email": r"^[^@\s\\\"]+@[^@\s\\\"]+\.[^@\s\\\".]+$",
           "duration": r"^P(\d+Y)?(\d+M)?(\d+W)?(\d+D)?(T(\d+H)?(\d+M)?(\d+S)?)?$"}


def _anchored(pattern: str) -> Any:
    """``pattern`` compiled by the ``regex`` module (transformers' own dependency), whose partial
    matching says whether a prefix can still match; None where it is missing or cannot compile it."""
    if pattern not in _PATTERNS:
        try:
            import regex

            _PATTERNS[pattern] = regex.compile(pattern)
        except Exception:  # an ECMA-262 construct Python's regex does not take: left to validation
            _PATTERNS[pattern] = None
    return _PATTERNS[pattern]


def _string_choices(schema: dict) -> list[str] | None:
    """The strings an ``enum`` / ``const`` allows, or None for any string."""
    if "enum" in schema or "const" in schema:
        values = schema["enum"] if "enum" in schema else [schema["const"]]
        strings = [v for v in values if isinstance(v, str)]
        return strings if isinstance(values, list) else None
    return None


class _Value:
    """Before a value: whitespace, then the first character picks the frame."""

    def __init__(self, schema: dict, root: dict):
        self.schema, self.root = _resolve(schema, root), root

    def step(self, c: str, p: "JsonPrefix") -> bool:
        if c in WS:
            return True
        schema = self.schema
        alts = _branches(schema, self.root)
        if alts is not None:  # the first character picks the branch
            schema = _branch_for(alts, c)
            if schema is None:
                return False
        kinds = _kinds(schema)
        frame: Any = None
        if c == "{" and "object" in kinds:
            frame = _Object(schema, self.root)
        elif c == "[" and "array" in kinds:
            frame = _Array(schema, self.root)
        elif c == '"' and "string" in kinds:
            frame = _String(_string_choices(schema), schema=schema)
        elif (c == "-" or c.isdigit() and c.isascii()) and kinds & {"number", "integer"}:
            integer = "number" not in kinds
            frame = _Number(integer=integer, bounds=_int_bounds(schema) if integer else None)
            p.stack[-1] = frame
            return frame.step(c, p)
        elif c == "t" and "boolean" in kinds:
            frame = _Literal("true")
        elif c == "f" and "boolean" in kinds:
            frame = _Literal("false")
        elif c == "n" and "null" in kinds:
            frame = _Literal("null")
        if frame is None:
            return False
        p.stack[-1] = frame  # the value is this frame from here on
        if isinstance(frame, _Literal):
            frame.i = 1  # its first letter was c (true, false, null: never whole at one)
        return True


class _Object:
    def __init__(self, schema: dict, root: dict):
        self.root = root
        self.props: dict = schema.get("properties") or {}
        extra = schema.get("additionalProperties", True)
        self.extra: dict | None = None if extra is False else (extra if isinstance(extra, dict) else {})
        self.required = [k for k in schema.get("required") or [] if isinstance(k, str)]
        self.seen: set[str] = set()
        self.phase = "first"  # first (after '{'), key (after ','), colon, after (a value just ended)
        self.key = ""

    def _keys_left(self) -> list[str] | None:
        """The keys that may still come (None: any string)."""
        return None if self.extra is not None else [k for k in self.props if k not in self.seen]

    def step(self, c: str, p: "JsonPrefix") -> bool:
        if c in WS:
            return True
        if self.phase in ("first", "key"):
            if c == "}" and self.phase == "first" and not self.required:
                p.pop()
                return True
            left = self._keys_left()
            if c == '"' and (left is None or left):
                p.push(_String(left, key_of=self))
                return True
            return False
        if self.phase == "colon":
            if c != ":":
                return False
            self.phase = "value"
            schema = self.props.get(self.key, self.extra if self.extra is not None else {})
            p.push(_Value(schema, self.root))
            return True
        if self.phase == "after":
            if c == "}" and all(k in self.seen for k in self.required):
                p.pop()
                return True
            left = self._keys_left()
            if c == "," and (left is None or left):
                self.phase = "key"
                return True
        return False

    def child_done(self, child: Any) -> None:
        if isinstance(child, _String) and child.key_of is self:
            self.key = child.text
            self.seen.add(child.text)
            self.phase = "colon"
        else:
            self.phase = "after"


class _Array:
    def __init__(self, schema: dict, root: dict):
        self.root = root
        self.items = schema.get("items") if isinstance(schema.get("items"), dict) else {}
        self.prefix = schema.get("prefixItems") if isinstance(schema.get("prefixItems"), list) else []
        self.min = int(schema.get("minItems") or 0)
        self.max = schema.get("maxItems") if isinstance(schema.get("maxItems"), int) else None
        self.n = 0
        self.phase = "first"  # first (after '['), item (after ','), after (an item just ended)

    def _item(self) -> dict:
        return self.prefix[self.n] if self.n < len(self.prefix) else self.items

    def step(self, c: str, p: "JsonPrefix") -> bool:
        if c in WS:
            return True
        if self.phase == "after":
            if c == "]" and self.n >= self.min:
                p.pop()
                return True
            if c == "," and (self.max is None or self.n < self.max):
                self.phase = "item"
                return True
            return False
        if c == "]" and self.phase == "first" and self.min == 0:
            p.pop()
            return True
        if self.max is not None and self.n >= self.max:
            return False
        p.push(_Value(self._item(), self.root))
        return p.step(c)

    def child_done(self, child: Any) -> None:
        self.n += 1
        self.phase = "after"


_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}


class _String:
    """After the opening quote; ``choices``: the strings it may become (None: any); ``schema``: its
    ``minLength``, ``maxLength`` and an anchored ``pattern`` (``^...``, the form formats such as
    dates take; an unanchored one is left to validation, since text can always be added to match)."""

    def __init__(self, choices: list[str] | None, key_of: Any = None, schema: dict | None = None):
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
            self.patterns.append(_anchored(pattern))
        if fmt in FORMATS:
            self.patterns.append(_anchored(FORMATS[fmt]))
        self.patterns = [x for x in self.patterns if x is not None]

    def _fits(self, text: str) -> bool:
        if self.max is not None and len(text) > self.max:
            return False
        if any(not x.fullmatch(text, partial=True) for x in self.patterns):
            return False
        return self.choices is None or any(ch.startswith(text) for ch in self.choices)

    def _next_chars(self) -> set[str] | None:
        """The characters a choice may take next (None: any)."""
        if self.choices is None:
            return None
        n = len(self.text)
        return {ch[n] for ch in self.choices if ch.startswith(self.text) and len(ch) > n}

    def step(self, c: str, p: "JsonPrefix") -> bool:
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
            if self.choices is not None and self.text not in self.choices or len(self.text) < self.min:
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


def _int_bounds(schema: dict) -> tuple[float, float] | None:
    """An integer's ``minimum`` / ``maximum`` (exclusive ones moved in by one) as (low, high), None
    where it has neither."""
    def num(key: str) -> float | None:
        v = schema.get(key)
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None

    above, below = num("exclusiveMinimum"), num("exclusiveMaximum")
    lows = [x for x in (num("minimum"), None if above is None else math.floor(above) + 1) if x is not None]
    highs = [x for x in (num("maximum"), None if below is None else math.ceil(below) - 1) if x is not None]
    if not lows and not highs:
        return None
    return (math.ceil(max(lows)) if lows else -math.inf, math.floor(min(highs)) if highs else math.inf)


class _Number:
    # A DFA over JSON's number grammar: -?(0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?
    ACCEPT = {"zero", "int", "frac", "expdig"}

    def __init__(self, integer: bool, bounds: tuple[float, float] | None = None):
        self.integer = integer
        self.state = "start"
        self.length = 0
        self.bounds = bounds  # an integer's (low, high): its digits only grow toward a value between them
        self.text = ""

    def _reachable(self, text: str, state: str) -> bool:
        """Whether an integer written ``text`` so far (in ``state``) can still end between the bounds."""
        low, high = self.bounds
        if state == "minus":
            return low <= 0  # "-0" is 0; any other is negative
        sign = -1 if text.startswith("-") else 1
        v = int(text.lstrip("-"))
        if state == "zero":
            return low <= 0 <= high
        for k in range(MAX_NUMBER - len(text) + 1):  # k more digits: v * 10^k .. v * 10^k + 10^k - 1
            a, b = v * 10**k, v * 10**k + 10**k - 1
            lo, hi = (a, b) if sign > 0 else (-b, -a)
            if lo <= high and hi >= low:
                return True
            if (a > high) if sign > 0 else (-a < low):  # more digits only move it further out
                break
        return False

    def _ends(self) -> bool:
        """Whether the number written so far is a whole one between the bounds."""
        if self.state not in self.ACCEPT:
            return False
        return self.bounds is None or self.bounds[0] <= int(self.text) <= self.bounds[1]

    def _next(self, c: str) -> str | None:
        s, digit = self.state, c.isascii() and c.isdigit()
        if s == "start":
            return "minus" if c == "-" else "zero" if c == "0" else "int" if digit else None
        if s == "minus":
            return "zero" if c == "0" else "int" if digit else None
        if s in ("zero", "int"):
            if digit and s == "int":
                return "int"
            if c == "." and not self.integer:
                return "dot"
            if c in "eE" and not self.integer:
                return "exp"
            return None
        if s in ("dot", "frac"):
            if digit:
                return "frac"
            return "exp" if c in "eE" and s == "frac" else None
        if s == "exp":
            return "expsign" if c in "+-" else "expdig" if digit else None
        if s in ("expsign", "expdig"):
            return "expdig" if digit else None
        return None

    def step(self, c: str, p: "JsonPrefix") -> bool:
        nxt = self._next(c)
        # Near the cap only a step into a whole number: a number cut at "1." could not end.
        if nxt is not None and (self.length < MAX_NUMBER - 2 or nxt in self.ACCEPT and self.length < MAX_NUMBER) \
                and (self.bounds is None or self._reachable(self.text + c, nxt)):
            self.state, self.length, self.text = nxt, self.length + 1, self.text + c
            return True
        if not self._ends():
            return False
        p.pop()  # the number ended before c, which belongs to the frame below
        return p.step(c)


class _Literal:
    def __init__(self, word: str):
        self.word, self.i = word, 0

    def step(self, c: str, p: "JsonPrefix") -> bool:
        if self.i >= len(self.word) or c != self.word[self.i]:
            return False
        self.i += 1
        if self.i == len(self.word):
            p.pop()
        return True


class JsonPrefix:
    """Whether a text is the start of a JSON document ``schema`` can accept (see the module)."""

    def __init__(self, schema: dict):
        self.root = schema if isinstance(schema, dict) else {}
        self.stack: list[Any] = [_Value(self.root, self.root)]
        self.done = False  # the top-level value is complete: only the end may follow
        self.ws = 0  # whitespace characters in a row outside strings

    def copy(self) -> "JsonPrefix":
        # The schema is shared, never changed: copy the frames' own state, not the schema.
        new = JsonPrefix.__new__(JsonPrefix)
        new.root, new.done, new.ws = self.root, self.done, self.ws
        new.stack = []
        twins: dict[int, Any] = {}
        for f in self.stack:
            g = copy.copy(f)
            if isinstance(f, _Object):
                g.seen = set(f.seen)
            twins[id(f)] = g
            new.stack.append(g)
        for g in new.stack:
            if isinstance(g, _String) and g.key_of is not None:
                g.key_of = twins.get(id(g.key_of), g.key_of)
        return new

    def push(self, frame: Any) -> None:
        self.stack.append(frame)

    def pop(self) -> None:
        child = self.stack.pop()
        if self.stack:
            parent = self.stack[-1]
            if isinstance(parent, _Value):  # a value frame is replaced by its kind's, never a parent
                raise AssertionError("a value frame left on the stack")
            parent.child_done(child)
        else:
            self.done = True

    def step(self, c: str) -> bool:
        if self.done:
            return False
        top = self.stack[-1]
        if c in WS and not isinstance(top, _String):
            self.ws += 1
            if self.ws > MAX_WS:
                return False
        else:
            self.ws = 0
        return top.step(c, self)

    def feed(self, text: str) -> bool:
        """Read ``text``; False (the prefix is then unusable) where it cannot continue the document."""
        return all(self.step(c) for c in text)

    def can_end(self) -> bool:
        """Whether the text so far is a whole document (a top-level number ends only here)."""
        if self.done:
            return True
        return len(self.stack) == 1 and isinstance(self.stack[0], _Number) and self.stack[0]._ends()

