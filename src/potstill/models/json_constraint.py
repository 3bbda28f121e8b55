"""Whether a text is the start of a JSON document a JSON Schema can accept: what greedy decoding
under a schema (``models.json_guide``) asks of each candidate token, so an extraction student's
answer always parses.

``JsonPrefix`` reads text one character at a time with a stack of frames (an object, an array, a
string, a number, a literal), each knowing its part of the schema: an object takes only the keys
its ``properties`` name when ``additionalProperties`` is false, closes only once its ``required``
keys are in, holds ``maxProperties`` / ``minProperties``, and gives each value its property's
schema; a string or a number of an ``enum`` (or a ``const``) only grows toward one of its values (a
number toward its plain spelling: ``3`` for 3.0), and true, false and null come only where it holds
them; a value takes only the ``type``'s kinds (``integer``: no fraction or exponent); arrays follow
``items`` (``prefixItems``), ``minItems``, ``maxItems`` and ``uniqueItems`` (an item may not be an
earlier string, number, true, false or null, and a ``,`` comes only where another item remains;
objects and arrays as items are not compared); strings ``minLength``, ``maxLength``, an anchored
``pattern`` and the ``format``s of ``FORMATS`` (date, time, date-time, uuid, ipv4, ipv6, email,
duration, hostname, as patterns); a number's ``minimum`` / ``maximum`` (exclusive ones too;
``Field(ge=0, le=1)`` on an int or a float) and a ``multipleOf`` (a float's exact as a decimal:
0.07 is a multiple of 0.01): its text only grows toward a value between them (a multiple), and a
bounded float, or one with a multipleOf, is written without an exponent. Local ``$ref``s
(``#/$defs/...``, as pydantic writes nested models) are followed; an ``allOf``, or a ``$ref`` beside
constraints of its own, is merged into one schema (``models.json_schema_parts``, which reads the
schema; this module reads the text, its string and number frames in ``models.json_scalars``).

``anyOf`` / ``oneOf`` (pydantic's ``Optional[X]``, unions, tagged unions of models) are read as
parallel readings (``_Parse``): a value starts one for each branch that takes its first character,
each held to its branch's schema (with the constraints beside the ``anyOf``), and a reading ends
where the text leaves its branch (a tag's ``const``, a key the branch does not name, a value of
another kind). Readings that have come to the same state merge, and at most ``MAX_PARSES`` are kept.

Keywords it does not follow (an unanchored ``pattern``, other ``format``s, ``not``, ``if``,
``allOf`` parts that disagree, uniqueness of objects and arrays, ...) are left open, to the task's
validation of the finished answer, which may then still fail them, as without the constraint.

``models.json_guide`` decodes under it, a token at a time.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any

from potstill.models.json_scalars import _Number, _String
from potstill.models.json_schema_parts import (Root, allows, branches, first_kind, kinds_of, resolve, string_choices,
                                               takes)

WS = " \t\n\r"
# A run of whitespace between tokens is capped (a number too: ``json_scalars.MAX_NUMBER``): unbounded,
# a model that prefers one more space (or digit) would fill its whole budget with them. 16 covers
# indent=4 to depth 4.
MAX_WS = 16


class _Value:
    """Before a value: whitespace, then the first character picks the frame (and, under an ``anyOf`` /
    ``oneOf``, the branches that take it: the parse follows the first, a twin of it each other one)."""

    def __init__(self, schema: dict, root: Root, exclude: frozenset = frozenset()):
        self.schema, self.root = resolve(schema, root), root
        self.exclude = exclude  # values it may not be (``value_key``s): its array's earlier items under uniqueItems

    def key(self) -> tuple:
        return ("v", id(self.schema), self.exclude)

    def step(self, c: str, p: "_Parse") -> bool:
        if c in WS:
            return True
        schema = self.schema
        alts = branches(schema, self.root)
        if alts is not None:
            kind = first_kind(c)
            fit = [a for a in alts if takes(a, kind)]
            if not fit:
                return False
            for other in fit[1:]:  # a twin parse for each other branch, from here, before c
                twin = p.copy()
                twin.stack[-1] = _Value(other, self.root, self.exclude)
                p.forks.append(twin)
            schema = fit[0]
        kinds = kinds_of(schema)
        frame: Any = None
        if c == "{" and "object" in kinds:
            frame = _Object(schema, self.root)
        elif c == "[" and "array" in kinds:
            frame = _Array(schema, self.root)
        elif c == '"' and "string" in kinds:
            frame = _String(string_choices(schema), schema=schema, exclude=self.exclude)
            if frame.choices == [] or self.exclude and not frame.viable(""):
                return False
        elif (c == "-" or c.isdigit() and c.isascii()) and kinds & {"number", "integer"}:
            frame = _Number(integer="number" not in kinds, schema=schema, exclude=self.exclude)
            p.stack[-1] = frame
            return frame.step(c, p)
        elif c in _WORDS and _takes_literal(c, kinds, schema, self.exclude):
            frame = _Literal(_WORDS[c][0])
        if frame is None:
            return False
        p.stack[-1] = frame  # the value is this frame from here on
        if isinstance(frame, _Literal):
            frame.i = 1  # its first letter was c (true, false, null: never whole at one)
        return True


class _Object:
    def __init__(self, schema: dict, root: Root):
        self.root, self.sid = root, id(schema)
        self.props: dict = schema.get("properties") or {}
        extra = schema.get("additionalProperties", True)
        self.extra: dict | None = None if extra is False else (extra if isinstance(extra, dict) else {})
        self.required = [k for k in schema.get("required") or [] if isinstance(k, str)]
        # maxProperties / minProperties (pydantic's dict[...] with max_length / min_length).
        self.most = schema.get("maxProperties") if isinstance(schema.get("maxProperties"), int) else None
        self.least = schema.get("minProperties") if isinstance(schema.get("minProperties"), int) else 0
        self.seen: set[str] = set()
        self.phase = "first"  # first (after '{'), key (after ','), colon, after (a value just ended)
        self.key_ = ""  # the key whose value comes next

    def key(self) -> tuple:
        return ("o", self.sid, self.phase, self.key_, frozenset(self.seen))

    def _keys_left(self) -> list[str] | None:
        """The keys that may still come (None: any string): under ``maxProperties``, once the room
        left is the required keys still missing, only those."""
        left = None if self.extra is not None else [k for k in self.props if k not in self.seen]
        if self.most is not None:
            missing = [k for k in self.required if k not in self.seen]
            if len(self.seen) + len(missing) >= self.most:
                left = missing if left is None else [k for k in left if k in missing]
        return left

    def _can_close(self) -> bool:
        return all(k in self.seen for k in self.required) and len(self.seen) >= self.least

    def step(self, c: str, p: "_Parse") -> bool:
        if c in WS:
            return True
        if self.phase in ("first", "key"):
            if c == "}" and self.phase == "first" and self._can_close():
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
            schema = self.props.get(self.key_, self.extra if self.extra is not None else {})
            p.push(_Value(schema, self.root))
            return True
        if self.phase == "after":
            if c == "}" and self._can_close():
                p.pop()
                return True
            left = self._keys_left()
            if c == "," and (left is None or left):
                self.phase = "key"
                return True
        return False

    def child_done(self, child: Any) -> None:
        if isinstance(child, _String) and child.key_of is self:
            self.key_ = child.text
            self.seen.add(child.text)
            self.phase = "colon"
        else:
            self.phase = "after"


class _Array:
    def __init__(self, schema: dict, root: Root):
        self.root, self.sid = root, id(schema)
        self.items = schema.get("items") if isinstance(schema.get("items"), dict) else {}
        self.prefix = schema.get("prefixItems") if isinstance(schema.get("prefixItems"), list) else []
        self.min = int(schema.get("minItems") or 0)
        self.max = schema.get("maxItems") if isinstance(schema.get("maxItems"), int) else None
        self.n = 0
        self.phase = "first"  # first (after '['), item (after ','), after (an item just ended)
        # uniqueItems (pydantic's set[...]): the items so far (``value_key``s; objects and arrays are
        # not compared, left to validation), which each next item may not be.
        self.unique = schema.get("uniqueItems") is True
        self.seen: frozenset = frozenset()

    def key(self) -> tuple:
        return ("a", self.sid, self.n, self.phase, self.seen)

    def _item(self) -> dict:
        return self.prefix[self.n] if self.n < len(self.prefix) else self.items

    def step(self, c: str, p: "_Parse") -> bool:
        if c in WS:
            return True
        if self.phase == "after":
            if c == "]" and self.n >= self.min:
                p.pop()
                return True
            if c == "," and (self.max is None or self.n < self.max) \
                    and (not self.seen or possible(self._item(), self.root, self.seen)):
                self.phase = "item"
                return True
            return False
        if c == "]" and self.phase == "first" and self.min == 0:
            p.pop()
            return True
        if self.max is not None and self.n >= self.max:
            return False
        p.push(_Value(self._item(), self.root, self.seen))
        return p.step(c)

    def child_done(self, child: Any) -> None:
        self.n += 1
        self.phase = "after"
        v = value_key(child) if self.unique else None
        if v is not None:
            self.seen = self.seen | {v}


class _Literal:
    def __init__(self, word: str):
        self.word, self.i = word, 0

    def key(self) -> tuple:
        return ("l", self.word, self.i)

    def step(self, c: str, p: "_Parse") -> bool:
        if self.i >= len(self.word) or c != self.word[self.i]:
            return False
        self.i += 1
        if self.i == len(self.word):
            p.pop()
        return True


# The value a literal's first letter starts, as ``value_key`` writes it.
_LITERALS = {"t": ("b", True), "f": ("b", False), "n": ("z", None)}
# Each literal by its first letter: the word, the kind that holds it, its value.
_WORDS = {"t": ("true", "boolean", True), "f": ("false", "boolean", False), "n": ("null", "null", None)}


def _takes_literal(c: str, kinds: set[str], schema: dict, exclude: frozenset) -> bool:
    """Whether a value of ``kinds`` under ``schema`` may be the literal ``c`` starts (its enum, if
    any, holding it) and is not one ``exclude`` holds."""
    _, kind, value = _WORDS[c]
    return kind in kinds and allows(schema, value) and _LITERALS[c] not in exclude


def value_key(frame: Any) -> tuple | None:
    """A finished item's value, as uniqueItems compares them (1 and 1.0 equal, true not 1): None for an
    object or an array, which are not compared."""
    if isinstance(frame, _String):
        return ("s", frame.text)
    if isinstance(frame, _Number):
        return ("n", Fraction(frame.text))
    if isinstance(frame, _Literal):
        return _LITERALS[frame.word[0]]
    return None


def possible(schema: dict, root: Root, exclude: frozenset) -> bool:
    """Whether a value under ``schema`` other than those ``exclude`` holds remains: False only where
    the schema allows a few values and all of them are excluded (an enum's, a bounded integer's, a
    boolean's, a string's under a pattern or a length); any other number is taken to have more."""
    schema = resolve(schema, root)
    alts = branches(schema, root)
    if alts is not None:
        return any(possible(a, root, exclude) for a in alts)
    kinds = kinds_of(schema)
    if kinds & {"object", "array"}:
        return True
    if "string" in kinds:
        text = _String(string_choices(schema), schema=schema, exclude=exclude)
        if text.choices != [] and text.viable(""):
            return True
    if any(_takes_literal(c, kinds, schema, exclude) for c in _WORDS):
        return True
    if kinds & {"number", "integer"}:
        number = _Number(integer="number" not in kinds, schema=schema, exclude=exclude)
        if number.choices is not None:  # an enum's, less the excluded ones
            return bool(number.choices)
        return number.bounds is None or number._left(*number.bounds)
    return False


MAX_PARSES = 16  # readings of one text kept at once (a union's branches); more are dropped


class _Parse:
    """One reading of the text: a stack of frames. Under an ``anyOf`` / ``oneOf`` a value may start
    several readings (``forks``), one per branch that takes its first character."""

    def __init__(self, root: Root):
        self.root = root
        self.stack: list[Any] = [_Value(root.doc, root)]
        self.done = False  # the top-level value is complete: only the end may follow
        self.ws = 0  # whitespace characters in a row outside strings
        self.forks: list[_Parse] = []

    def copy(self) -> "_Parse":
        # The schema is shared, never changed: copy the frames' own state, not the schema.
        new = _Parse.__new__(_Parse)
        new.root, new.done, new.ws, new.forks = self.root, self.done, self.ws, []
        new.stack = []
        twins: dict[int, Any] = {}
        for f in self.stack:
            g = object.__new__(f.__class__)  # copy.copy's result without its __reduce_ex__ (guide_host.json)
            g.__dict__.update(f.__dict__)
            if isinstance(f, _Object):
                g.seen = set(f.seen)
            twins[id(f)] = g
            new.stack.append(g)
        for g in new.stack:
            if isinstance(g, _String) and g.key_of is not None:
                g.key_of = twins.get(id(g.key_of), g.key_of)
        return new

    def key(self) -> tuple:
        """Equal for two readings that accept the same continuations (the same frames, in the same
        states, under the same schemas)."""
        return (self.done, self.ws, *(f.key() for f in self.stack))

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

    def can_end(self) -> bool:
        """Whether the text so far is a whole document (a top-level number ends only here)."""
        if self.done:
            return True
        return len(self.stack) == 1 and isinstance(self.stack[0], _Number) and self.stack[0]._ends()


class JsonPrefix:
    """Whether a text is the start of a JSON document ``schema`` can accept (see the module): the
    readings of it still alive, one unless a union's branches all take what was read so far."""

    def __init__(self, schema: dict):
        self.parses = [_Parse(Root(schema))]

    @property
    def done(self) -> bool:
        """The top-level value is complete: only the end may follow."""
        return any(p.done for p in self.parses)

    def copy(self) -> "JsonPrefix":
        new = JsonPrefix.__new__(JsonPrefix)
        new.parses = [p.copy() for p in self.parses]
        return new

    def step(self, c: str) -> bool:
        """Read one character; False (the prefix is then unusable) where no reading takes it."""
        alive: list[_Parse] = []
        for p in self.parses:
            if p.step(c):
                alive.append(p)
            if p.forks:  # readings started by c's value under other branches: each reads c too
                twins, p.forks = p.forks, []
                alive.extend(t for t in twins if t.stack[-1].step(c, t))
        if len(alive) > 1:
            seen: dict[tuple, _Parse] = {}
            for p in alive:
                seen.setdefault(p.key(), p)
            alive = list(seen.values())[:MAX_PARSES]
        self.parses = alive
        return bool(alive)

    def feed(self, text: str) -> bool:
        """Read ``text``; False (the prefix is then unusable) where it cannot continue the document."""
        return all(self.step(c) for c in text)

    def opens(self, lo: int, hi: int) -> bool:
        """Whether a character from code point ``lo`` to ``hi`` (all beyond ASCII, as the bytes of a
        character split across tokens begin) may come next: only inside a string."""
        return any(not p.done and isinstance(p.stack[-1], _String) and p.stack[-1].opens(lo, hi) for p in self.parses)

    def can_end(self) -> bool:
        """Whether the text so far is a whole document (a top-level number ends only here)."""
        return any(p.can_end() for p in self.parses)
