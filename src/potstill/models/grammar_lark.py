"""Lark grammars, as vLLM's ``guided_grammar`` also takes them (its outlines and guidance backends,
and OpenAI's grammar-constrained custom tools), rewritten as GBNF for ``grammar_constraint``.

Read: rules (``name: ...``, with ``?``, ``!`` or ``_`` before the name and a ``.priority`` after
it, both ignored), terminals (``NAME: ...``), ``"literals"`` (``i`` for any case), ``"a".."z"``
ranges, ``/regular expressions/`` (flags ``i`` and ``s``), ``( )``, ``[ ]`` (optional), ``? * +``,
``~ n`` and ``~ n..m``, aliases (``-> name``, ignored), ``//`` comments, ``%import common.NAME``
(Lark's common terminals) and ``%ignore`` (text allowed after every terminal and at the start,
what Lark's lexer skips). ``start`` is where an answer starts.

A regular expression is rewritten as a grammar too: classes, escapes (``\\d \\w \\s`` as ASCII
classes), groups, alternation and every quantifier (lazy ones as greedy: the same language). What
a grammar cannot say is refused by name with its line: lookarounds, back-references, anchors
inside an expression, inline flags; templates, ``%declare``, ``%override``, ``%extend`` and
imports other than ``common``.
"""

from __future__ import annotations

import re

from potstill.models.grammar_constraint import MAX_REPEAT, GrammarError

# A definition: a rule or terminal name (``?`` / ``!`` before it, ``.n`` after it) and its colon.
_DEF = re.compile(r"[ \t]*([?!]?)([A-Za-z_][A-Za-z0-9_]*)(?:\.(-?\d+))?[ \t]*:(?!:)")
_TOKEN = re.compile(r"""
    (?P<ws>[ \t\r\n]+|//[^\n]*|\#[^\n]*)
  | (?P<string>"(?:[^"\\\n]|\\.)*"i?)
  | (?P<regex>/(?!/)(?:[^/\\\n]|\\.)+/[imslux]*)
  | (?P<arrow>->)
  | (?P<dots>\.\.)
  | (?P<number>\d+)
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<op>[|()\[\]?*+~{},])
""", re.X)

# Lark's common.lark, the terminals ``%import common`` brings, in GBNF (names as Lark's, ``c-``
# before them); ESCAPED_STRING without its lookbehind (the same strings).
_COMMON = {
    "DIGIT": "[0-9]", "HEXDIGIT": "[a-fA-F0-9]", "INT": "c-DIGIT+",
    "SIGNED_INT": '("+" | "-")? c-INT', "DECIMAL": 'c-INT "." c-INT? | "." c-INT',
    "_EXP": '("e" | "E") c-SIGNED_INT', "FLOAT": "c-INT c-_EXP | c-DECIMAL c-_EXP?",
    "SIGNED_FLOAT": '("+" | "-")? c-FLOAT', "NUMBER": "c-FLOAT | c-INT",
    "SIGNED_NUMBER": '("+" | "-")? c-NUMBER',
    "ESCAPED_STRING": '"\\"" ([^"\\\\\\n] | "\\\\" [^\\n])* "\\""',
    "LCASE_LETTER": "[a-z]", "UCASE_LETTER": "[A-Z]", "LETTER": "[a-zA-Z]", "WORD": "c-LETTER+",
    "CNAME": '("_" | c-LETTER) ("_" | c-LETTER | c-DIGIT)*', "WS_INLINE": "[ \\t]+", "WS": "[ \\t\\f\\r\\n]+",
    "CR": '"\\r"', "LF": '"\\n"', "NEWLINE": "(c-CR? c-LF)+",
    "SH_COMMENT": '"#" [^\\n]*', "CPP_COMMENT": '"//" [^\\n]*',
    "C_COMMENT": '"/*" ([^*] | "*"+ [^*/])* "*"+ "/"', "SQL_COMMENT": '"--" [^\\n]*',
}
_COMMON_USES = {"INT": ["DIGIT"], "SIGNED_INT": ["INT"], "DECIMAL": ["INT"], "_EXP": ["SIGNED_INT"],
                "FLOAT": ["INT", "_EXP", "DECIMAL"], "SIGNED_FLOAT": ["FLOAT"], "NUMBER": ["FLOAT", "INT"],
                "SIGNED_NUMBER": ["NUMBER"], "WORD": ["LETTER"], "CNAME": ["LETTER", "DIGIT"],
                "NEWLINE": ["CR", "LF"]}


def looks_like_lark(text: str) -> bool:
    """Whether a grammar is Lark's rather than GBNF: definitions with ``:`` and none with ``::=``
    (vLLM tells the two apart the same way)."""
    return "::=" not in text and any(_DEF.match(line) for line in text.splitlines())


def lark_to_gbnf(text: str) -> str:
    """A Lark grammar (the module docstring) as GBNF text whose ``root`` is its ``start``;
    GrammarError, naming the line, for what it cannot read."""
    return _Lark(text).convert()


def _counts(low: str, high: str | None, fail, where: str) -> str:
    """A repetition's GBNF ``{low,high}`` (``high`` None: as many as wanted), or fail where it cannot be."""
    lo = int(low or 0)
    if high is not None and high != "" and int(high) < lo:
        raise fail(f"{where}: a repetition with its maximum ({high}) below its minimum ({lo})")
    if max(lo, int(high or 0)) > MAX_REPEAT:
        raise fail(f"{where}: a repetition over {MAX_REPEAT} (each is spelled out); use '*' or '+'")
    return f"{{{lo},{'' if high is None else high}}}"


def regex_to_gbnf(pattern: str) -> str:
    """A regular expression matched whole (vLLM's ``guided_regex``) as a GBNF grammar, where a
    grammar can say it (GrammarError otherwise: lookarounds, back-references, inline flags...)."""
    def fail(what: str) -> GrammarError:
        return GrammarError(what)

    return f"root ::= {_Regex(pattern, '', fail).convert() or chr(34) * 2}\n"


def _gbnf_char(c: str) -> str:
    """One character inside a GBNF string or class, escaped where GBNF would read it otherwise."""
    o = ord(c)
    if c in '"\\[]^-' or o < 32 or o == 127:
        return f"\\x{o:02X}" if o < 256 else f"\\u{o:04X}"
    return c


def _class(ranges: list[tuple[int, int]], negated: bool = False) -> str:
    body = "".join(_gbnf_char(chr(lo)) + ("" if lo == hi else "-" + _gbnf_char(chr(hi))) for lo, hi in ranges)
    return f"[{'^' if negated else ''}{body}]"


def _any_case(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """``ranges`` with each letter's other case added (ASCII letters)."""
    out = list(ranges)
    for lo, hi in ranges:
        for a, b, shift in ((ord("a"), ord("z"), -32), (ord("A"), ord("Z"), 32)):
            x, y = max(lo, a), min(hi, b)
            if x <= y:
                out.append((x + shift, y + shift))
    return out


def _literal(s: str, any_case: bool = False) -> str:
    if not s:
        return '""'
    if any_case and any(c.isalpha() for c in s):
        return " ".join(_class(_any_case([(ord(c), ord(c))])) if c.isascii() and c.isalpha() else
                        f'"{_gbnf_char(c)}"' for c in s)
    return '"' + "".join(_gbnf_char(c) for c in s) + '"'


_CLASS_ESCAPES = {"d": [(48, 57)], "w": [(48, 57), (65, 90), (95, 95), (97, 122)],
                  "s": [(9, 13), (32, 32)]}
_CHAR_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "f": "\f", "v": "\v", "a": "\a", "0": "\0"}


class _Regex:
    """A Python regular expression (the subset a context-free grammar can say) as GBNF text."""

    def __init__(self, src: str, flags: str, fail):
        self.s, self.i, self.fail = src, 0, fail
        self.any_case, self.dot_all = "i" in flags, "s" in flags

    def convert(self) -> str:
        if self.s.startswith("^"):
            self.i = 1
        out = self.alternation()
        if self.i < len(self.s) and self.s[self.i] == "$" and self.i == len(self.s) - 1:
            self.i += 1
        if self.i != len(self.s):
            raise self.fail(f"regular expression /{self.s}/: unexpected {self.s[self.i]!r} at {self.i + 1}")
        return out

    def alternation(self) -> str:
        parts = [self.sequence()]
        while self.i < len(self.s) and self.s[self.i] == "|":
            self.i += 1
            parts.append(self.sequence())
        return parts[0] if len(parts) == 1 else "(" + " | ".join(p or '""' for p in parts) + ")"

    def sequence(self) -> str:
        items = []
        while self.i < len(self.s) and self.s[self.i] not in "|)":
            if self.s[self.i] == "$" and self.i == len(self.s) - 1:
                break
            atom = self.atom()
            items.append(self.quantified(atom))
        return " ".join(items)

    def quantified(self, atom: str) -> str:
        s = self.s
        while self.i < len(s) and s[self.i] in "*+?{":
            c = s[self.i]
            if c == "{":
                m = re.compile(r"\{(\d*)(,?)(\d*)\}").match(s, self.i)
                if not m or not (m.group(1) or m.group(3)):
                    return atom + self._literal_char("{", advance=True)  # a brace Python reads as itself
                self.i = m.end()
                high = (m.group(3) or None) if m.group(2) else (m.group(1) or "0")
                atom = f"({atom})" + _counts(m.group(1), high, self.fail, f"regular expression /{s}/")
            else:
                self.i += 1
                atom = f"({atom}){c}"
            if self.i < len(s) and s[self.i] == "?":  # lazy: the same language
                self.i += 1
            elif self.i < len(s) and s[self.i] == "+":
                raise self.fail(f"regular expression /{s}/: a possessive quantifier cannot be said in a grammar")
        return atom

    def _literal_char(self, c: str, advance: bool = False) -> str:
        if advance:
            self.i += 1
        return _literal(c, self.any_case)

    def atom(self) -> str:
        s, c = self.s, self.s[self.i]
        if c == "(":
            self.i += 1
            if s.startswith("?:", self.i):
                self.i += 2
            elif s.startswith("?P<", self.i):
                self.i = s.index(">", self.i) + 1
            elif s.startswith("?", self.i):
                what = "a lookaround" if s[self.i + 1: self.i + 2] in ("=", "!", "<") else "an inline flag or group"
                raise self.fail(f"regular expression /{s}/: {what} cannot be said in a grammar")
            inner = self.alternation()
            if self.i >= len(s) or s[self.i] != ")":
                raise self.fail(f"regular expression /{s}/: '(' is never closed")
            self.i += 1
            return f"({inner or chr(34) * 2})"
        if c == "[":
            return self.char_class()
        if c == ".":
            self.i += 1
            return "." if self.dot_all else "[^\\x0A]"
        if c in "^$":
            raise self.fail(f"regular expression /{s}/: an anchor inside it cannot be said in a grammar")
        if c in "*+?":
            raise self.fail(f"regular expression /{s}/: {c!r} follows nothing")
        if c == "\\":
            kind, value = self.escape(in_class=False)
            return _class(value) if kind == "class" else _class(value[0], negated=True) if kind == "negated" else \
                self._literal_char(value)
        self.i += 1
        return self._literal_char(c)

    def escape(self, in_class: bool):
        """The escape at ``i``: ("class", ranges), ("negated", [ranges]) or ("char", c)."""
        s = self.s
        if self.i + 1 >= len(s):
            raise self.fail(f"regular expression /{s}/: ends in a backslash")
        e = s[self.i + 1]
        self.i += 2
        if e.lower() in _CLASS_ESCAPES:
            ranges = _CLASS_ESCAPES[e.lower()]
            return ("class", ranges) if e.islower() else ("negated", [ranges])
        if e in _CHAR_ESCAPES:
            return "char", _CHAR_ESCAPES[e]
        if e in "xuU":
            width = {"x": 2, "u": 4, "U": 8}[e]
            digits = s[self.i: self.i + width]
            if len(digits) != width or not re.fullmatch(r"[0-9A-Fa-f]+", digits):
                raise self.fail(f"regular expression /{s}/: \\{e} takes {width} hex digits")
            self.i += width
            return "char", chr(int(digits, 16))
        if e.isdigit() or e in "bBAZzGkpP" and not (in_class and e == "b"):
            what = "a back-reference" if e.isdigit() or e == "k" else "an anchor" if e in "bBAZzG" else \
                "a Unicode property"
            raise self.fail(f"regular expression /{s}/: {what} (\\{e}) cannot be said in a grammar")
        if in_class and e == "b":
            return "char", "\b"
        return "char", e

    def char_class(self) -> str:
        s, start = self.s, self.i
        self.i += 1
        negated = s.startswith("^", self.i)
        self.i += negated
        ranges: list[tuple[int, int]] = []
        excluded: list[list[tuple[int, int]]] = []
        first = True
        while True:
            if self.i >= len(s):
                raise self.fail(f"regular expression /{s}/: a class opened at {start + 1} is never closed")
            c = s[self.i]
            if c == "]" and not first:
                self.i += 1
                break
            first = False
            if c == "\\":
                kind, value = self.escape(in_class=True)
                if kind == "class":
                    ranges += value
                    continue
                if kind == "negated":
                    excluded += value
                    continue
                lo = value
            else:
                lo = c
                self.i += 1
            hi = lo
            if s.startswith("-", self.i) and self.i + 1 < len(s) and s[self.i + 1] != "]":
                self.i += 1
                if s[self.i] == "\\":
                    kind, value = self.escape(in_class=True)
                    if kind != "char":
                        raise self.fail(f"regular expression /{s}/: a range cannot end in a class escape")
                    hi = value
                else:
                    hi = s[self.i]
                    self.i += 1
            ranges.append((ord(lo), ord(hi)))
        if self.any_case:
            ranges = _any_case(ranges)
        if excluded:  # [\D], [^\S]...: what a negated escape leaves, as one class
            if negated and not ranges and len(excluded) == 1:  # [^\W]: \w
                return _class(excluded[0])
            if negated or ranges:
                raise self.fail(f"regular expression /{s}/: \\D, \\W or \\S beside other characters in one class "
                                "is not read here")
            return _class(excluded[0], negated=True)
        return _class(ranges, negated)


class _Lark:
    def __init__(self, text: str):
        self.text = text
        self.defs: dict[str, tuple[int, str]] = {}  # name -> (line, its expansion's text)
        self.ignore: list[str] = []
        self.imports: dict[str, str] = {}  # name in the grammar -> common terminal
        self.used: set[str] = set()  # names the expansions refer to

    def fail(self, what: str, line: int) -> GrammarError:
        return GrammarError(f"{what} at line {line} (Lark)")

    def convert(self) -> str:
        current: tuple[str, int, list[str]] | None = None
        for n, line in enumerate(self.text.splitlines(), 1):
            bare = line.strip()
            if not bare or bare.startswith(("//", "#")):
                continue
            if bare.startswith("%"):
                self._directive(bare, n)
                current = None
                continue
            m = _DEF.match(line)
            if m and not line[: m.start(2)].strip(" \t?!"):
                name = m.group(2)
                if name in self.defs:
                    raise self.fail(f"'{name}' is defined twice (first at line {self.defs[name][0]})", n)
                current = (name, n, [line[m.end():]])
                self.defs[name] = (n, "")
                self._keep(current)
                continue
            if current is None:
                if re.match(r"\s*[A-Za-z_][A-Za-z0-9_]*\s*\{", line):
                    raise self.fail("templates are not read here", n)
                raise self.fail("expected a definition 'name: ...' or a %directive", n)
            current[2].append(line)
            self._keep(current)
        if "start" not in self.defs:
            raise GrammarError("the Lark grammar has no rule 'start', where every answer starts")
        out = []
        for name, (line, body) in self.defs.items():
            rule = not name.lstrip("_")[:1].isupper()
            out.append(f"l-{name} ::= {self._expansions(body, line, rule)}")
        for name in sorted(self.used - set(self.defs)):
            if name in self.imports:
                continue
            raise self.fail(f"'{name}' is used but never defined", self._first_use(name))
        common = self._common(self.imports.values())
        out += [f"l-{alias} ::= c-{name}" for alias, name in self.imports.items()]
        out += [f"c-{name} ::= {body}" for name, body in common.items()]
        ign = ""
        if self.ignore:
            out.append("l--ignored ::= (" + " | ".join(self.ignore) + ")*")
            ign = "l--ignored "
        out.insert(0, f"root ::= {ign}l-start")
        return "\n".join(out) + "\n"

    def _keep(self, current: tuple[str, int, list[str]]) -> None:
        name, line, parts = current
        self.defs[name] = (line, "\n".join(parts))

    def _first_use(self, name: str) -> int:
        for n, line in enumerate(self.text.splitlines(), 1):
            if re.search(rf"(?<![A-Za-z0-9_\"/]){re.escape(name)}(?![A-Za-z0-9_])", line):
                return n
        return 1

    def _directive(self, bare: str, n: int) -> None:
        m = re.fullmatch(r"%import\s+common\s*\.\s*([A-Za-z_]+)(?:\s*->\s*([A-Za-z_][A-Za-z0-9_]*))?\s*", bare)
        many = re.fullmatch(r"%import\s+common\s*\(([A-Za-z_,\s]+)\)\s*", bare)
        if m or many:
            names = [(m.group(1), m.group(2) or m.group(1))] if m else \
                [(x.strip(), x.strip()) for x in many.group(1).split(",") if x.strip()]
            for name, alias in names:
                if name not in _COMMON:
                    raise self.fail(f"common.{name} is not one of Lark's common terminals read here "
                                    f"({', '.join(sorted(k for k in _COMMON if not k.startswith('_')))})", n)
                self.imports[alias] = name
            return
        if bare.startswith("%ignore"):
            rest = bare[len("%ignore"):].strip()
            if not rest:
                raise self.fail("%ignore names nothing", n)
            self.ignore.append(self._expansions(rest, n, rule=False, ignore=True))
            return
        word = bare.split()[0]
        raise self.fail(f"{word} is not read here (only %import common and %ignore)", n)

    def _common(self, names) -> dict[str, str]:
        need, seen = list(names), {}
        while need:
            name = need.pop()
            if name not in seen:
                seen[name] = _COMMON[name]
                need += _COMMON_USES.get(name, [])
        return seen

    def _expansions(self, body: str, line: int, rule: bool, ignore: bool = False) -> str:
        tokens = []
        for m in _TOKEN.finditer(body):
            kind = m.lastgroup
            if kind == "ws":
                continue
            tokens.append((kind, m.group()))
        covered = sum(len(m.group()) for m in _TOKEN.finditer(body))
        if covered != len(body):  # something the tokenizer skipped over
            bad = next((c for i, c in enumerate(body) if not _TOKEN.match(body, i)), "?")
            raise self.fail(f"unexpected {bad!r}", line)
        p = _LarkExpansion(tokens, line, self, rule, ignore)
        out = p.alternatives()
        if p.i != len(tokens):
            raise self.fail(f"unexpected {tokens[p.i][1]!r}", line)
        return out or '""'


class _LarkExpansion:
    def __init__(self, tokens, line: int, lark: _Lark, rule: bool, ignore: bool):
        self.t, self.i, self.line, self.lark, self.rule = tokens, 0, line, lark, rule
        self.ignore = ignore  # an %ignore's own text: nothing ignored inside it

    def fail(self, what: str) -> GrammarError:
        return self.lark.fail(what, self.line)

    def peek(self) -> tuple[str, str] | None:
        return self.t[self.i] if self.i < len(self.t) else None

    def alternatives(self) -> str:
        parts = [self.sequence()]
        while self.peek() == ("op", "|"):
            self.i += 1
            parts.append(self.sequence())
        return parts[0] if len(parts) == 1 else " | ".join(p or '""' for p in parts)

    def sequence(self) -> str:
        items = []
        while (tok := self.peek()) is not None and tok not in (("op", "|"), ("op", ")"), ("op", "]")):
            if tok[0] == "arrow":  # an alias names the tree's node: nothing in the language
                self.i += 1
                if self.peek() is None or self.peek()[0] != "name":
                    raise self.fail("'->' names no alias")
                self.i += 1
                continue
            items.append(self.item())
        return " ".join(items)

    def item(self) -> str:
        atom = self.atom()
        while (tok := self.peek()) is not None:
            if tok in (("op", "?"), ("op", "*"), ("op", "+")):
                self.i += 1
                atom = f"({atom}){tok[1]}"
            elif tok == ("op", "~"):
                self.i += 1
                low = self._number()
                high = low
                if self.peek() == ("dots", ".."):
                    self.i += 1
                    high = self._number()
                atom = f"({atom})" + _counts(low, high, self.fail, f"'~ {low}..{high}'")
            elif tok == ("op", "{"):  # llguidance's {m,n}
                self.i += 1
                low = self._number() if self.peek() and self.peek()[0] == "number" else "0"
                high: str | None = low
                if self.peek() == ("op", ","):
                    self.i += 1
                    high = self._number() if self.peek() and self.peek()[0] == "number" else None
                if self.peek() != ("op", "}"):
                    raise self.fail("expected '}' closing a repetition")
                self.i += 1
                atom = f"({atom})" + _counts(low, high, self.fail, f"'{{{low},{high or ''}}}'")
            else:
                break
        return atom

    def _number(self) -> str:
        tok = self.peek()
        if tok is None or tok[0] != "number":
            raise self.fail("expected a number after '~'")
        self.i += 1
        return tok[1]

    def _token(self, text: str) -> str:
        """A terminal's text inside a rule: followed by what %ignore allows, as Lark's lexer skips it."""
        return f"{text} l--ignored" if self.rule and self.lark.ignore and not self.ignore else text

    def atom(self) -> str:
        tok = self.peek()
        if tok is None:
            raise self.fail("an expansion ends where an item was expected")
        kind, text = tok
        self.i += 1
        if kind == "op" and text in "([":
            inner = self.alternatives()
            close = ")" if text == "(" else "]"
            if self.peek() != ("op", close):
                raise self.fail(f"'{text}' is never closed")
            self.i += 1
            return f"({inner or chr(34) * 2})" + ("?" if text == "[" else "")
        if kind == "string":
            value = self._string(text)
            if self.peek() == ("dots", ".."):
                self.i += 1
                end = self.peek()
                if end is None or end[0] != "string":
                    raise self.fail("'..' needs a literal after it")
                self.i += 1
                high = self._string(end[1])
                if len(value) != 1 or len(high) != 1 or ord(high) < ord(value):
                    raise self.fail(f"a range {text}..{end[1]} needs one character on each side, in order")
                return self._token(_class([(ord(value), ord(high))]))
            return self._token(_literal(value, any_case=text.endswith("i")))
        if kind == "regex":
            body, flags = text[1:].rsplit("/", 1)
            if set(flags) - {"i", "s"}:
                raise self.fail(f"regular expression {text}: flags other than i and s are not read here")
            return self._token("(" + _Regex(body, flags, self.fail).convert() + ")")
        if kind == "name":
            self.lark.used.add(text)
            is_rule = not text.lstrip("_")[:1].isupper()
            if not self.rule and is_rule:
                raise self.fail(f"terminal uses the rule '{text}' (terminals may use only terminals)")
            ref = f"l-{text}"
            return ref if is_rule else self._token(ref)
        raise self.fail(f"unexpected {text!r}")

    def _string(self, text: str) -> str:
        body = text[1:-2] if text.endswith("i") else text[1:-1]
        out, i = [], 0
        while i < len(body):
            c = body[i]
            if c != "\\":
                out.append(c)
                i += 1
                continue
            e = body[i + 1]
            if e in "xuU":
                width = {"x": 2, "u": 4, "U": 8}[e]
                digits = body[i + 2: i + 2 + width]
                if len(digits) != width or not re.fullmatch(r"[0-9A-Fa-f]+", digits):
                    raise self.fail(f"\\{e} takes {width} hex digits in {text}")
                out.append(chr(int(digits, 16)))
                i += 2 + width
                continue
            out.append(_CHAR_ESCAPES.get(e, e))
            i += 2
        return "".join(out)
