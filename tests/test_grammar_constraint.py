"""Guided decoding under a GBNF grammar (``potstill.models.grammar_constraint``, vLLM's
``guided_grammar``): the parser's errors, the Earley reader against regular expressions and
nested languages, random walks, and a tiny real Llama decoding under grammars."""

from __future__ import annotations

import itertools
import json
import random

import pytest
import regex

from potstill.models.grammar_constraint import (GrammarError, GrammarPrefix, compile_grammar, derives, grammar_guide,
                                                grammar_problem)
from tests.test_json_constraint import ASKS, TOPIC, _valid, walk

# Each grammar beside a regular expression for the same language: repetitions written every way,
# empty alternatives, left and right recursion, negated classes, '.', escapes and single quotes.
SAME_AS = [
    ('root ::= "a"* "b"', r"a*b"),
    ('root ::= ("ab" | "a")+ "c"?', r"(?:ab|a)+c?"),
    ('root ::= x{2,4} y\nx ::= [ab]\ny ::= | "c" y', r"[ab]{2,4}c*"),
    ('root ::= (x | "")* "b"\nx ::= "a" | ""', r"a*b"),
    ('root ::= ("a" [bc]?){1,3} ("c"{2})?', r"(?:a[bc]?){1,3}(?:cc)?"),
    ('root ::= s\ns ::= s "a" | "b"', r"ba*"),
    ('root ::= s\ns ::= "a" s | "b"', r"a*b"),
    ('root ::= [^a]{0,2} "a"', r"[^a]{0,2}a"),
    ('root ::= . "b" .?', r"(?s:.)b(?s:.)?"),
    ('root ::= (("a"?)? ("b"*)?)+ "c"', r"(?:a?b*)+c"),
    ('root ::= "x"{,2} # at most two\n', r"x{0,2}"),
    ('root ::= "x"{3}', r"x{3}"),
    ('root ::= "x"{2,}', r"x{2,}"),
    ("root ::= 'a' [\\x62-\\x63] \"\\\\\"", r"a[b-c]\\"),
]

# A JSON grammar in GBNF, as llama.cpp's and xgrammar's users write them.
JSON_GBNF = r'''
root   ::= object
value  ::= object | array | string | number | ("true" | "false" | "null") ws
object ::=
  "{" ws (
            string ":" ws value
    ("," ws string ":" ws value)*
  )? "}" ws
array  ::= "[" ws ( value ("," ws value)* )? "]" ws
string ::=
  "\"" (
    [^"\\\x7F\x00-\x1F] |
    "\\" (["\\/bfnrt] | "u" [0-9a-fA-F]{4}) # escapes
  )* "\"" ws
number ::= ("-"? ([0-9] | [1-9] [0-9]{0,15})) ("." [0-9]+)? ([eE] [-+]? [0-9]{1,3})? ws
ws ::= | " " | "\n" [ \t]{0,20}
'''

ARITHMETIC = '''
root ::= expr
expr ::= term (("+" | "-") term)*
term ::= factor (("*" | "/") factor)*
factor ::= [0-9]+ | "(" expr ")" | "-" factor
'''

# Bounded, so a random model's greedy answer has to finish within its budget.
SQL = '''
root ::= "SELECT " cols " FROM " table (" WHERE " cond)?
cols ::= col (", " col){0,2}
col ::= "id" | "name" | "price"
table ::= "items" | "orders"
cond ::= col " " [=<>] " " [0-9]{1,3}
'''


def test_a_grammar_reads_as_the_regular_expression_of_its_language():
    """Every prefix the grammar accepts is one the pattern can still match (and only those), every
    whole text the same; ``done`` only where nothing may follow."""
    rng = random.Random(0)
    alphabet = "abcx\\"
    for grammar, pattern in SAME_AS:
        rx = regex.compile(pattern)
        for _ in range(400):
            text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 7)))
            p = GrammarPrefix(grammar)
            fed = p.feed(text)
            assert fed == (rx.fullmatch(text, partial=True) is not None), (grammar, text)
            assert (fed and p.can_end()) == (rx.fullmatch(text) is not None), (grammar, text)
            if fed and p.done:
                assert not any(rx.fullmatch(text + c, partial=True) for c in alphabet), (grammar, text)


def test_a_nested_language_and_copies_that_go_their_own_ways():
    rng = random.Random(1)
    for _ in range(2000):
        text = "".join(rng.choice("()x") for _ in range(rng.randint(0, 10)))
        depth = [0]
        for c in text:
            depth.append(depth[-1] + (1 if c == "(" else -1 if c == ")" else 99))
        prefix = "x" not in text and min(depth) >= 0
        p = GrammarPrefix('root ::= "(" root ")" root | ""')
        assert p.feed(text) == prefix, text
        assert p.can_end() == (prefix and depth[-1] == 0), text
    assert derives(ARITHMETIC, "2*(3+-4)/17") and not derives(ARITHMETIC, "2*(3+4") and \
        not GrammarPrefix(ARITHMETIC).feed("2+)")
    p = GrammarPrefix('root ::= "ab" | "ac"')
    q = p.copy()
    assert p.feed("a")
    r = p.copy()
    assert p.feed("b") and p.done and r.feed("c") and r.done and not q.can_end() and not q.copy().feed("b")


def _random_grammar(rng: random.Random, rules: int) -> str:
    """A random GBNF grammar over 'a', 'b' (and whatever a negated class or '.' takes): literals
    (empty ones too), classes, rule references (recursion, left and right), groups and every
    repetition, so that empty rules, cycles and rules that never finish all come up."""
    names = ["root"] + [f"r{i}" for i in range(1, rules)]

    def item(depth: int) -> str:
        k = rng.random()
        if k < 0.35:
            return '"' + "".join(rng.choice("ab") for _ in range(rng.randint(0, 2))) + '"'
        if k < 0.5:
            return rng.choice(["[ab]", "[^a]", "[a-b]", "."])
        if k < 0.75 or depth > 1:
            return rng.choice(names)
        return "(" + alternatives(depth + 1) + ")"

    def sequence(depth: int) -> str:
        out = []
        for _ in range(rng.randint(0, 3)):
            low = rng.randint(0, 2)
            out.append(item(depth) + rng.choice(["", "", "", "", "*", "+", "?", f"{{{low},{low + rng.randint(0, 2)}}}"]))
        return " ".join(out)

    def alternatives(depth: int) -> str:
        return " | ".join(sequence(depth) for _ in range(rng.randint(1, 3)))

    return "\n".join(f"{n} ::= {alternatives(0)}" for n in names)


def _derives_by_table(g, text: str) -> bool:
    """Whether the compiled grammar ``g`` derives ``text``, by a fixpoint over every substring
    (which rule derives which span), a reference that shares nothing with the Earley reader."""
    spans: set[tuple[int, int, int]] = set()

    def seq(rhs: tuple, i: int, j: int, memo: dict) -> bool:
        if (rhs, i, j) not in memo:
            memo[rhs, i, j] = (i == j) if not rhs else any(
                ((rhs[0], i, m) in spans if isinstance(rhs[0], int) else m == i + 1 and rhs[0].match(text[i]))
                and seq(rhs[1:], m, j, memo) for m in range(i, j + 1))
        return memo[rhs, i, j]

    grew = True
    while grew:
        grew, memo = False, {}
        for i in range(len(text) + 1):
            for j in range(i, len(text) + 1):
                for lhs, rhs in g.prods:
                    if (lhs, i, j) not in spans and seq(rhs, i, j, memo):
                        spans.add((lhs, i, j))
                        grew = True
    return (g.root, 0, len(text)) in spans


def test_random_grammars_read_as_a_table_of_spans_derives():
    """On random grammars, every text of up to 4 of 'a', 'b', 'c' is whole for the reader exactly
    where the reference derives it, and every start of a derived text is accepted."""
    rng, checked = random.Random(3), 0
    words = [""] + ["".join(w) for n in range(1, 5) for w in itertools.product("abc", repeat=n)]
    while checked < 60:
        text = _random_grammar(rng, rng.randint(1, 3))
        try:
            g = compile_grammar(text)
        except GrammarError:  # no root that finishes: refused, as its own test shows
            continue
        derived = {w for w in words if _derives_by_table(g, w)}
        for w in words:
            p = GrammarPrefix(g)
            fed = p.feed(w)
            assert (fed and p.can_end()) == (w in derived), (text, w)
            assert fed or not any(d.startswith(w) for d in derived), (text, w)
        checked += 1


@pytest.mark.parametrize("doc", [{"vendor": 'A"c\\me é ☃', "total": -12.5e3, "items": [1, 20, 300], "paid": True,
                                  "note": None, "nested": {"a": [], "b": {}}}, {}, {"x": [[[]]]}])
def test_the_json_grammar_takes_json_and_refuses_the_rest(doc):
    for text in (json.dumps(doc), json.dumps(doc, ensure_ascii=False), json.dumps(doc, separators=(",", ":"))):
        assert derives(JSON_GBNF, text), text
        assert not derives(JSON_GBNF, text[:-1])
    for bad in ('{"a" 1}', "[1]", '{"a": 01}', '{"a": "\x01"}', "{,}", '{"a": tru}'):
        assert not derives(JSON_GBNF, bad), bad


@pytest.mark.parametrize("grammar, problem", [
    ("root ::= x", "rule 'x' is used but never defined at line 1, column 10"),
    ('root: "a"', "the Lark grammar has no rule 'start'"),  # read as Lark (tests/test_grammar_lark.py)
    ('root ::= "a" (', "'(' is never closed at line 1, column 14"),
    ('root ::= "a")', "')' closes no '('"),
    ("root ::= [a", "a character class that is never closed"),
    ('root ::= "a', "a string that is never closed"),
    ('root ::= "a"{3,2}', "maximum below its minimum"),
    ('root ::= "a"{5000}', "a repetition over 1000"),
    ('root ::= [z-a]', "runs backwards"),
    ('root ::= r\nr ::= "a" r', "rule 'root' derives no finite text"),
    ("root ::= [^\\x00-\\U0010FFFF]", "rule 'root' derives no finite text"),
    ('a ::= "x"', "the grammar has no rule 'root'"),
    ("  # nothing\n", "the grammar is empty"),
    ("root ::= <think>", "token terminals"),
    ('root ::= "\\q"', "unknown escape \\q"),
    ('root ::= "\\xZZ"', "\\x takes 2 hex digits"),
    ('root ::= "a"\nroot ::= "b"', "rule 'root' is defined twice (first at line 1, column 1) at line 2, column 1"),
    ("root ::= @", "unexpected '@' at line 1, column 10"),
])
def test_a_grammar_that_cannot_guide_is_one_line_saying_where(grammar, problem):
    got = grammar_problem(grammar)
    assert got is not None and problem in got and "\n" not in got, got


def test_random_walks_never_dead_end_and_every_whole_walk_derives():
    """A rule that only ever recurses is dropped with the alternatives that need it, so that no
    accepted prefix is one that could never finish."""
    rng = random.Random(2)
    trap = 'root ::= "a" loop | "b" [0-9]*\nloop ::= "c" loop'
    assert not GrammarPrefix(trap).feed("a") and derives(trap, "b12")
    printable = [chr(i) for i in range(32, 127)] + ["\n", "\t", "é"]
    for grammar, toward in ((JSON_GBNF, ',"]}:'), (ARITHMETIC, ")+"), (SQL, " "), (trap, "")):
        for _ in range(30):
            text, whole = walk(GrammarPrefix(grammar), rng, printable, toward=toward, limit=400, give_up=True)
            assert not whole or derives(grammar, text), (grammar, text)
            if grammar == JSON_GBNF and whole:
                json.loads(text)


def test_a_random_tiny_model_answers_what_the_grammar_derives(bpe_lm):
    """vLLM's guided_grammar: the random tiny model's greedy answers, never derived unguided, are
    derived whole under the grammar, batched and alone alike, in one batch with a pattern's row and
    a JSON Schema's."""
    from potstill.models.generation import generate
    from potstill.models.prompting import PromptFormat
    from potstill.models.regex_constraint import regex_guide

    fmt = PromptFormat(kind="chat", instruction="Answer.")
    free = generate(bpe_lm, fmt, ASKS, 24)
    assert not any(derives(SQL, t) or derives(ARITHMETIC, t) for t in free.texts)
    guides = [grammar_guide(SQL), regex_guide(r"[A-Z]{2}-[0-9]{2,4}"), TOPIC]
    batched = generate(bpe_lm, fmt, ASKS, 200, batch_size=3, json_schema=guides)
    single = generate(bpe_lm, fmt, ASKS, 200, batch_size=1, json_schema=guides)
    assert batched.texts == single.texts
    assert derives(SQL, batched.texts[0]) and regex.fullmatch(r"[A-Z]{2}-[0-9]{2,4}", batched.texts[1]), batched.texts
    assert _valid(batched.texts[2])


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    "not __import__('torch').cuda.is_available()", reason="needs a CUDA GPU"))])
def test_a_grammar_guides_on_static_caches_as_the_logits_processor_does(bpe_lm, device, tmp_path):
    """On static caches with steps recorded per cache (a CUDA graph each on a GPU), grammar-guided
    answers are ``model.generate``'s with the guide as a logits processor, token for token, beside
    an unguided row (the same too on the CPU; on a GPU the random model's 120 free tokens may part
    at a near tie, the two paths' kernels differing)."""
    from potstill.models.generation import generate
    from potstill.models.loading import load_lm
    from potstill.models.prompting import PromptFormat
    from potstill.models.static_decode import StaticCaches
    from tests.export.conftest import make_bpe_model

    if device == "cuda":
        bpe_lm = load_lm(str(make_bpe_model(tmp_path / "bpe")), device="cuda", dtype="float32")
    fmt = PromptFormat(kind="chat", instruction="Answer.")
    static = StaticCaches.for_model(bpe_lm.model, graph_steps=8)
    guides = [grammar_guide(SQL), None, grammar_guide('root ::= "(" [0-9]{1,2} (" " [a-z]+){1,3} ")"')]
    ref = generate(bpe_lm, fmt, ASKS, 120, batch_size=3, json_schema=guides)
    got = generate(bpe_lm, fmt, ASKS, 120, batch_size=3, json_schema=guides, static=static)
    rows = [0, 1, 2] if device == "cpu" else [0, 2]
    assert [got.tokens[r] for r in rows] == [ref.tokens[r] for r in rows] and static._guided
    assert device == "cpu" or all(s.graph is not None for s in static._guided.values())
    assert derives(SQL, got.texts[0]) and regex.fullmatch(r"\([0-9]{1,2}(?: [a-z]+){1,3}\)", got.texts[2]), got.texts
