"""Guided decoding under a context-free grammar: vLLM's ``guided_grammar`` in GBNF, the grammar
format of llama.cpp that vLLM's xgrammar backend reads (``root ::= ...``, literals in quotes,
character classes, ``.``, groups, ``* + ? {m} {m,} {m,n}``, ``#`` comments), or in Lark's format,
which ``models.grammar_lark`` rewrites as GBNF first (told apart as vLLM does: ``:`` and no ``::=``).

``compile_grammar`` parses a grammar once (cached by its text) into productions over characters and
drops those that can never finish (a rule that only ever recurses), so that every prefix it accepts
can still be completed; ``GrammarPrefix`` reads an answer a character at a time with an Earley
recogniser, whose chart grows by one set per character and is shared between copies, which is what
the guide needs (``models.json_guide``: ``copy``, ``feed``, ``can_end``, ``done``). A row's guide
travels as ``{GRAMMAR: text}`` (``grammar_guide``), as a JSON Schema or a pattern does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

# A guide that is a grammar, not a JSON Schema: ``{GRAMMAR: text}`` (``grammar_guide``).
GRAMMAR = "x-potstill-grammar"
MAX_REPEAT = 1000  # the largest count a {m,n} may name: each is spelled out as that many symbols
MAX_SYMBOLS = 200_000  # productions' symbols in all, once repetitions are spelled out

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
_RULE = re.compile(r"([A-Za-z_][A-Za-z0-9_.-]*)[ \t]*::=")
_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "0": "\0", "f": "\f", "v": "\v", "b": "\b", "a": "\a"}


class GrammarError(ValueError):
    """A grammar that cannot guide decoding, with the line and column where it went wrong."""


def grammar_guide(text: str) -> dict:
    """The guide of answers that grammar ``text`` (GBNF or Lark) derives whole, in the form a schema
    travels in."""
    return {GRAMMAR: text}


def grammar_problem(text: str) -> str | None:
    """Why grammar ``text`` (GBNF or Lark) cannot guide decoding (one line), or None."""
    try:
        compile_grammar(text)
    except GrammarError as e:
        return str(e)
    return None


@dataclass(frozen=True, eq=False)
class Chars:
    """A terminal: one character within ``ranges`` (inclusive code points), or outside them if ``negated``."""

    ranges: tuple[tuple[int, int], ...]
    negated: bool = False
    memo: dict[str, bool] = field(default_factory=dict, compare=False, repr=False)

    def match(self, c: str) -> bool:
        got = self.memo.get(c)
        if got is None:
            o = ord(c)
            got = self.memo[c] = any(lo <= o <= hi for lo, hi in self.ranges) != self.negated
        return got

    def meets(self, lo: int, hi: int) -> bool:
        """Whether some code point from ``lo`` to ``hi`` matches."""
        if not self.negated:
            return any(a <= hi and lo <= b for a, b in self.ranges)
        nxt = lo  # the lowest code point not yet seen to be covered by a negated range
        for a, b in sorted(self.ranges):
            if a > nxt:
                break
            nxt = max(nxt, b + 1)
        return nxt <= hi

    @property
    def empty(self) -> bool:
        covered = sorted(self.ranges)
        if not self.negated:
            return not any(lo <= hi for lo, hi in covered)
        nxt = 0  # a negated class is empty where its ranges cover every code point
        for lo, hi in covered:
            if lo > nxt:
                return False
            nxt = max(nxt, hi + 1)
        return nxt > 0x10FFFF


@dataclass
class Grammar:
    """Productions ``lhs -> rhs`` (a rule's symbols: an int is a rule, a ``Chars`` one character),
    each rule's productions, the rules that can derive the empty text, and the start rule."""

    prods: list[tuple[int, tuple]]
    by_lhs: dict[int, list[int]]
    nullable: frozenset[int]
    root: int
    names: list[str]


class _Parser:
    def __init__(self, text: str):
        self.s, self.i = text, 0
        self.ids: dict[str, int] = {}
        self.names: list[str] = []
        self.alts: dict[int, list[list]] = {}  # a rule's alternatives, each a list of symbols
        self.defined: dict[str, int] = {}  # rule name -> position of its definition
        self.used: dict[str, int] = {}  # rule name -> position of its first use
        self.size = 0

    def where(self, at: int | None = None) -> str:
        at = self.i if at is None else at
        line = self.s.count("\n", 0, at) + 1
        return f"line {line}, column {at - (self.s.rfind(chr(10), 0, at) + 1) + 1}"

    def fail(self, what: str, at: int | None = None) -> GrammarError:
        return GrammarError(f"{what} at {self.where(at)}")

    def space(self) -> None:
        s = self.s
        while self.i < len(s):
            if s[self.i] in " \t\r\n":
                self.i += 1
            elif s[self.i] == "#":
                end = s.find("\n", self.i)
                self.i = len(s) if end < 0 else end + 1
            else:
                return

    def rule_id(self, name: str) -> int:
        if name not in self.ids:
            self.ids[name] = len(self.names)
            self.names.append(name)
        return self.ids[name]

    def fresh(self, alts: list[list], base: str) -> int:
        n = self.rule_id(f"{base}#{len(self.names)}")
        self.add(n, alts)
        return n

    def add(self, n: int, alts: list[list]) -> None:
        self.size += sum(len(a) for a in alts) + len(alts)
        if self.size > MAX_SYMBOLS:
            raise self.fail(f"the grammar spells out over {MAX_SYMBOLS:,} symbols (its repetitions)")
        self.alts[n] = alts

    def parse(self) -> None:
        self.space()
        if self.i == len(self.s):
            raise GrammarError("the grammar is empty: it needs a rule 'root ::= ...'")
        while self.i < len(self.s):
            m = _RULE.match(self.s, self.i)
            if not m:
                raise self.fail("expected a rule 'name ::= ...'")
            name, start = m.group(1), self.i
            if name in self.defined:
                raise self.fail(f"rule '{name}' is defined twice (first at {self.where(self.defined[name])})")
            self.defined[name] = start
            self.i = m.end()
            base = self.rule_id(name)
            self.add(base, self.alternates(name, nested=False))
            self.space()
        missing = sorted((at, n) for n, at in self.used.items() if n not in self.defined)
        if missing:
            raise self.fail(f"rule '{missing[0][1]}' is used but never defined", missing[0][0])
        if "root" not in self.defined:
            raise GrammarError("the grammar has no rule 'root', where every answer starts")

    def alternates(self, name: str, nested: bool) -> list[list]:
        alts = [self.sequence(name, nested)]
        while self.i < len(self.s) and self.s[self.i] == "|":
            self.i += 1
            alts.append(self.sequence(name, nested))
        return alts

    def sequence(self, name: str, nested: bool) -> list:
        seq: list = []
        while True:
            self.space()
            if self.i >= len(self.s) or self.s[self.i] in "|)":
                if self.i < len(self.s) and self.s[self.i] == ")" and not nested:
                    raise self.fail("')' closes no '('")
                return seq
            if _RULE.match(self.s, self.i):  # the next rule begins
                return seq
            at = self.i
            item = self.primary(name)
            while True:
                self.space()
                op = self.s[self.i] if self.i < len(self.s) else ""
                if op in ("*", "+", "?"):
                    self.i += 1
                    item = self.repeat(item, name, {"*": (0, None), "+": (1, None), "?": (0, 1)}[op], at)
                elif op == "{":
                    item = self.repeat(item, name, self.counts(), at)
                else:
                    break
            seq += item

    def counts(self) -> tuple[int, int | None]:
        m = re.compile(r"\{\s*(\d*)\s*(,?)\s*(\d*)\s*\}").match(self.s, self.i)
        if not m or not (m.group(1) or m.group(3)):
            raise self.fail("expected a repetition {m}, {m,}, {m,n} or {,n}")
        lo = int(m.group(1) or 0)
        hi = lo if not m.group(2) else (int(m.group(3)) if m.group(3) else None)
        if hi is not None and hi < lo:
            raise self.fail(f"a repetition {{{lo},{hi}}} with its maximum below its minimum")
        if max(lo, hi or 0) > MAX_REPEAT:
            raise self.fail(f"a repetition over {MAX_REPEAT} (each is spelled out); use '*' or '+'")
        self.i = m.end()
        return lo, hi

    def repeat(self, item: list, name: str, counts: tuple[int, int | None], at: int) -> list:
        """``item`` (a list of symbols) ``lo`` to ``hi`` times (None: unbounded) as symbols."""
        lo, hi = counts
        one = item[0] if len(item) == 1 else self.fresh([item], name)
        out = [one] * lo
        if hi is None:  # left recursion: R -> (empty) | R one, one Earley item per character
            r = self.rule_id(f"{name}#{len(self.names)}")
            self.add(r, [[], [r, one]])
            return out + [r]
        tail: list = []
        for _ in range(hi - lo):  # at most hi - lo more, nested: O -> (empty) | one O'
            tail = [self.fresh([[], [one, *tail]], name)]
        return out + tail

    def primary(self, name: str) -> list:
        s, c = self.s, self.s[self.i]
        if c in "\"'":
            return self.literal(c)
        if c == "[":
            return [self.char_class()]
        if c == ".":
            self.i += 1
            return [Chars((), negated=True)]
        if c == "(":
            open_at = self.i
            self.i += 1
            alts = self.alternates(name, nested=True)
            if self.i >= len(s) or s[self.i] != ")":
                raise self.fail("'(' is never closed", open_at)
            self.i += 1
            return [self.fresh(alts, name)] if len(alts) > 1 else alts[0] if alts[0] else [self.fresh([[]], name)]
        m = _NAME.match(s, self.i)
        if m:
            self.used.setdefault(m.group(0), self.i)
            self.i = m.end()
            return [self.rule_id(m.group(0))]
        if c == "<":
            raise self.fail("token terminals such as <[1234]> or <think> are not read here: "
                            "the guide reads text, so spell the token's text in quotes")
        raise self.fail(f"unexpected {c!r}")

    def char(self, quote: str) -> str:
        s = self.s
        if self.i >= len(s):
            raise self.fail(f"unterminated {'string' if quote in chr(34) + chr(39) else 'character class'}")
        c = s[self.i]
        if c != "\\":
            self.i += 1
            return c
        if self.i + 1 >= len(s):
            raise self.fail("an escape at the end of the grammar")
        e = s[self.i + 1]
        if e in "xuU":
            width = {"x": 2, "u": 4, "U": 8}[e]
            digits = s[self.i + 2: self.i + 2 + width]
            if len(digits) != width or not re.fullmatch(r"[0-9A-Fa-f]+", digits) or int(digits, 16) > 0x10FFFF:
                raise self.fail(f"\\{e} takes {width} hex digits of a code point")
            self.i += 2 + width
            return chr(int(digits, 16))
        if e.isalnum() and e not in _ESCAPES:
            raise self.fail(f"unknown escape \\{e}")
        self.i += 2
        return _ESCAPES.get(e, e)

    def literal(self, quote: str) -> list:
        start = self.i
        self.i += 1
        out = []
        while True:
            if self.i >= len(self.s) or self.s[self.i] == "\n":
                raise self.fail("a string that is never closed", start)
            if self.s[self.i] == quote:
                self.i += 1
                return [Chars(((ord(c), ord(c)),)) for c in out]
            out.append(self.char(quote))

    def char_class(self) -> Chars:
        start = self.i
        self.i += 1
        negated = self.i < len(self.s) and self.s[self.i] == "^"
        self.i += negated
        ranges = []
        while True:
            if self.i >= len(self.s):
                raise self.fail("a character class that is never closed", start)
            if self.s[self.i] == "]":
                self.i += 1
                return Chars(tuple(ranges), negated)
            lo = self.char("]")
            hi = lo
            if self.s.startswith("-", self.i) and not self.s.startswith("-]", self.i):
                self.i += 1
                hi = self.char("]")
                if ord(hi) < ord(lo):
                    raise self.fail(f"a range {lo!r}-{hi!r} that runs backwards")
            ranges.append((ord(lo), ord(hi)))


@lru_cache(maxsize=64)
def compile_grammar(text: str) -> Grammar:
    """GBNF (or Lark) ``text`` as productions, those that can never finish dropped (GrammarError where
    ``root`` itself cannot)."""
    if not isinstance(text, str):
        raise GrammarError("expected a grammar (a string)")
    from potstill.models.grammar_lark import lark_to_gbnf, looks_like_lark

    if looks_like_lark(text):  # as vLLM takes either: Lark's rules, rewritten as GBNF
        text = lark_to_gbnf(text)
    p = _Parser(text)
    p.parse()
    prods = [(lhs, tuple(rhs)) for lhs, alts in p.alts.items() for rhs in alts]
    # Productive rules: those with a production whose every symbol is a non-empty class or productive.
    good: set[int] = set()
    while True:
        more = {lhs for lhs, rhs in prods if lhs not in good and all(
            (s in good) if isinstance(s, int) else not s.empty for s in rhs)}
        if not more:
            break
        good |= more
    root = p.ids["root"]
    if root not in good:
        raise GrammarError("rule 'root' derives no finite text (every way through it recurses forever or "
                           "needs a character class that matches nothing)")
    prods = [(lhs, rhs) for lhs, rhs in prods
             if lhs in good and all((s in good) if isinstance(s, int) else not s.empty for s in rhs)]
    by_lhs: dict[int, list[int]] = {}
    for k, (lhs, _) in enumerate(prods):
        by_lhs.setdefault(lhs, []).append(k)
    nullable: set[int] = set()
    while True:
        more = {lhs for lhs, rhs in prods if lhs not in nullable and all(isinstance(s, int) and s in nullable
                                                                          for s in rhs)}
        if not more:
            break
        nullable |= more
    return Grammar(prods, by_lhs, frozenset(nullable), root, p.names)


class _Set:
    """One Earley set: its items (production, dot, origin), the items waiting for each rule, the
    items whose next symbol is a character (with that class), and whether the root is complete
    from the start."""

    __slots__ = ("items", "waiting", "scans", "accept")

    def __init__(self) -> None:
        self.items: set[tuple[int, int, int]] = set()
        self.waiting: dict[int, list[tuple[int, int, int]]] = {}
        self.scans: list[tuple[tuple[int, int, int], Chars]] = []
        self.accept = False


class GrammarPrefix:
    """Whether a text is the start of one that a GBNF grammar derives whole (module docstring).
    ``done``: the text is whole and no character could follow it, so only the end may."""

    def __init__(self, text: str | Grammar):
        self.g = compile_grammar(text) if isinstance(text, str) else text
        self.sets: list[_Set] = []
        self.ok = True
        self.sets.append(self._close([(k, 0, 0) for k in self.g.by_lhs.get(self.g.root, [])], 0))

    def copy(self) -> "GrammarPrefix":
        new = GrammarPrefix.__new__(GrammarPrefix)
        new.g, new.sets, new.ok = self.g, list(self.sets), self.ok  # sets are never changed once built
        return new

    def _close(self, agenda: list[tuple[int, int, int]], i: int) -> _Set:
        g, S, sets = self.g, _Set(), self.sets
        prods, by_lhs, nullable = g.prods, g.by_lhs, g.nullable
        items, waiting, scans = S.items, S.waiting, S.scans
        while agenda:
            item = agenda.pop()
            if item in items:
                continue
            items.add(item)
            k, dot, origin = item
            lhs, rhs = prods[k]
            if dot == len(rhs):
                if origin < i:  # a rule finished here: advance what waited for it where it began (one
                    # finished where it began is empty, and its waiters stepped over it as they came)
                    agenda.extend((k2, d2 + 1, o2) for k2, d2, o2 in sets[origin].waiting.get(lhs, ()))
                if lhs == g.root and origin == 0:
                    S.accept = True
                continue
            sym = rhs[dot]
            if isinstance(sym, int):
                first = sym not in waiting
                waiting.setdefault(sym, []).append(item)
                if first:
                    agenda.extend((k2, 0, i) for k2 in by_lhs.get(sym, ()))
                if sym in nullable:  # Aycock and Horspool: step over a rule that can be empty
                    agenda.append((k, dot + 1, origin))
            else:
                scans.append((item, sym))
        return S

    def feed(self, text: str) -> bool:
        for c in text:
            if not self.ok:
                return False
            last = self.sets[-1]
            agenda = [(k, dot + 1, origin) for (k, dot, origin), chars in last.scans if chars.match(c)]
            if not agenda:
                self.ok = False
                return False
            self.sets.append(self._close(agenda, len(self.sets)))
        return self.ok

    def can_end(self) -> bool:
        return self.ok and self.sets[-1].accept

    def opens(self, lo: int, hi: int) -> bool:
        """Whether a character from code point ``lo`` to ``hi`` may come next."""
        return self.ok and any(chars.meets(lo, hi) for _, chars in self.sets[-1].scans)

    @property
    def done(self) -> bool:
        return self.can_end() and not self.sets[-1].scans


def derives(grammar: str, text: str) -> bool:
    """Whether ``grammar`` (GBNF or Lark) derives ``text`` whole from its root."""
    p = GrammarPrefix(grammar)
    return p.feed(text) and p.can_end()


def llama_gbnf(text: str) -> str:
    """A grammar (GBNF or Lark, as ``compile_grammar`` reads it) as GBNF that llama.cpp's own
    grammar sampler takes (``llama-server``'s ``grammar`` field): the productions as read here,
    rules named ``root`` and ``r<n>`` (llama.cpp's names hold letters, digits and dashes only),
    classes with hex escapes, and the left recursion of repetitions turned into right recursion,
    which llama.cpp's stack-based sampler needs (a grammar left-recursive of its own, through other
    rules, stays so, and llama.cpp refuses it)."""
    g = compile_grammar(text)
    alts: dict[int, list[tuple]] = {lhs: [g.prods[k][1] for k in ks] for lhs, ks in g.by_lhs.items()}
    fresh = len(g.names)  # past every rule's number
    for lhs in list(alts):  # A -> A x | y  becomes  A -> y A',  A' -> x A' | (empty)
        own = [rhs[1:] for rhs in alts[lhs] if rhs[:1] == (lhs,)]
        if not own:
            continue
        rest = [rhs for rhs in alts[lhs] if rhs[:1] != (lhs,)]
        alts[lhs] = [(*rhs, fresh) for rhs in rest]
        alts[fresh] = [(*rhs, fresh) for rhs in own if rhs] + [()]
        fresh += 1

    def name(n: int) -> str:
        return "root" if n == g.root else f"r{n}"

    def char(o: int) -> str:
        return f"\\x{o:02X}" if o < 0x100 else f"\\u{o:04X}" if o < 0x10000 else f"\\U{o:08X}"

    def symbol(s: Any) -> str:
        if isinstance(s, int):
            return name(s)
        if s.negated and not s.ranges:
            return "."
        body = "".join(char(lo) + ("" if lo == hi else "-" + char(hi)) for lo, hi in s.ranges)
        return f"[{'^' if s.negated else ''}{body}]"

    lines = [f"{name(lhs)} ::= " + " | ".join(" ".join(map(symbol, rhs)) or '""' for rhs in rhss)
             for lhs, rhss in sorted(alts.items(), key=lambda kv: kv[0] != g.root)]
    return "\n".join(lines) + "\n"
