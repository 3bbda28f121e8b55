"""Lark grammars (``potstill.models.grammar_lark``), which vLLM's ``guided_grammar`` takes beside GBNF:
rewritten as GBNF, regular expressions included, and read by the same Earley reader."""

from __future__ import annotations

import json
import random
import re

import pytest

from potstill.models.grammar_constraint import GrammarPrefix, compile_grammar, derives, grammar_guide, grammar_problem
from potstill.models.grammar_lark import looks_like_lark
from tests.test_json_constraint import ASKS

# vLLM's documented Lark JSON grammar, with whitespace ignored as Lark's lexer skips it.
JSON_LARK = r'''
?start: value
?value: object
      | array
      | string
      | SIGNED_NUMBER      -> number
      | "true"             -> true
      | "false"            -> false
      | "null"             -> null

array  : "[" [value ("," value)*] "]"
object : "{" [pair ("," pair)*] "}"
pair   : string ":" value
string : ESCAPED_STRING

%import common.ESCAPED_STRING
%import common.SIGNED_NUMBER
%import common.WS
%ignore WS
'''

SQL_LARK = r'''
start: "SELECT"i _columns "FROM"i table [where] [limit]
_columns: column ("," column)* | "*"
column: NAME ("." NAME)?          // a dotted name
table: NAME
where: "WHERE"i condition ("AND"i condition)~0..2
condition: column OP (NUMBER | STRING)
limit: "LIMIT"i DIGIT~1..3
OP: "=" | "<" | ">" | "<=" | ">="
NAME.2: /[a-z_][a-z0-9_]*/
STRING: /'[^']*'/
DIGIT: "0".."9"
%import common.NUMBER
%import common.WS
%ignore WS
'''


def test_vllms_json_grammar_in_lark_takes_json_with_any_whitespace():
    assert looks_like_lark(JSON_LARK) and not looks_like_lark('root ::= "a"')
    for doc in ({"a": [1, 2.5, "x\n", None, True]}, [], {"b": {"c": -1e5}}):
        for text in (json.dumps(doc), json.dumps(doc, indent=2), "  " + json.dumps(doc) + "\n"):
            assert derives(JSON_LARK, text), text
    for bad in ('{"a" 1}', "[1,]", '{"a": tru}', "'x'", '{"a": 1} x'):
        assert not derives(JSON_LARK, bad), bad


def test_a_lark_sql_grammar_with_case_free_keywords_regexes_and_bounded_repeats():
    for text in ("select a, b from t", "SELECT t.a FROM t WHERE x = 'y' AND n >= 3.5 limit 10",
                 "Select *\nFROM t where a<1", "SELECT a FROM t LIMIT 999"):
        assert derives(SQL_LARK, text), text
    for bad in ("SELECT FROM t", "SELECT a FROM t LIMIT 1000", "SELECT a FROM t WHERE a = 1 AND b = 2 AND c = 3 AND d = 4",
                "SELECT A FROM t", "SELECT a FROM t WHERE a = \"x\""):
        assert not derives(SQL_LARK, bad), bad
    assert GrammarPrefix(SQL_LARK).feed("sel") and not GrammarPrefix(SQL_LARK).feed("sex")


def test_regular_expressions_read_as_python_reads_them():
    """Random expressions (classes, negated and escaped classes, groups, alternation, every
    quantifier, lazy ones, flags i and s) against Python's own re, on random texts."""
    rng = random.Random(5)
    atoms = ["a", "b", "c", ".", "[ab]", "[^a]", "[a-c]", r"\d", r"\w", r"\s", r"\D", r"[\d\s]", r"\.", "[.]", "x",
             r"[^\W]", r"\t", " "]

    def expression(depth: int = 0) -> str:
        parts = []
        for _ in range(rng.randint(1, 3)):
            atom = rng.choice(atoms) if rng.random() < 0.7 or depth > 1 else \
                "(" + ("?:" if rng.random() < 0.5 else "") + expression(depth + 1) + ")"
            parts.append(atom + rng.choice(["", "", "", "*", "+", "?", "{2}", "{1,2}", "{,2}", "{2,}", "*?", "+?"]))
        return "".join(parts) + ("|" + expression(depth + 1) if rng.random() < 0.3 and depth < 2 else "")

    for _ in range(120):
        pattern, flags = expression(), rng.choice(["", "", "i", "s"])
        g = compile_grammar(f"start: /{pattern}/{flags}")
        python = re.compile(pattern, (re.I if "i" in flags else 0) | (re.S if "s" in flags else 0))
        for _ in range(80):
            text = "".join(rng.choice("abcx1 .\t_ABX\n") for _ in range(rng.randint(0, 6)))
            p = GrammarPrefix(g)
            assert (p.feed(text) and p.can_end()) == bool(python.fullmatch(text)), (pattern, flags, text)


@pytest.mark.parametrize("grammar, problem", [
    ("start: /(?=a)b/", "a lookaround cannot be said in a grammar at line 1 (Lark)"),
    (r"start: /(a)\1/", r"a back-reference (\1) cannot be said in a grammar"),
    ("start: /a$b/", "an anchor inside it cannot be said"),
    ('start: "a" foo', "'foo' is used but never defined at line 1 (Lark)"),
    ('start: a\na: "x"\n%declare X', "%declare is not read here (only %import common and %ignore) at line 3"),
    ('foo: "x"', "the Lark grammar has no rule 'start'"),
    ('start: "a"\nstart: "b"', "'start' is defined twice (first at line 1) at line 2"),
    ("start: /[a-/", "a class opened at 1 is never closed"),
    ("start: /a{2,1}/", "a repetition with its maximum (1) below its minimum (2) at line 1 (Lark)"),
    ('start: "a" ~ 5..3', "'~ 5..3': a repetition with its maximum (3) below its minimum (5)"),
    ("start: /a{5000}/", "a repetition over 1000"),
    ('X: y\ny: "a"\nstart: X', "terminal uses the rule 'y' (terminals may use only terminals) at line 1"),
    ('%import python.NAME\nstart: "a"', "%import is not read here"),
    ("%import common.NOPE\nstart: NOPE", "common.NOPE is not one of Lark's common terminals"),
    ('start: "a"..', "'..' needs a literal after it"),
    ('start: "ab".."c"', "needs one character on each side"),
    ("_sep{x}: x\nstart: \"a\"", "templates are not read here at line 1"),
    ('start: ("a"', "'(' is never closed"),
    ("start: /a/m", "flags other than i and s are not read here"),
])
def test_what_a_lark_grammar_cannot_say_is_one_line_naming_its_line(grammar, problem):
    got = grammar_problem(grammar)
    assert got is not None and problem in got and "\n" not in got, got


def test_a_random_tiny_model_answers_what_a_lark_grammar_derives(bpe_lm):
    """Bounded, and without %ignore: a random model given free whitespace writes whitespace until
    its budget runs out (as under any guide that allows it unbounded)."""
    from potstill.models.generation import generate
    from potstill.models.prompting import PromptFormat

    bounded = r'''
start: "SELECT " column (", " column)~0..2 " FROM"i " " NAME [" WHERE " column " " OP " " DIGIT~1..3]
column: NAME
NAME: /(id|name|price)/
OP: /[=<>]/
DIGIT: "0".."9"
'''
    fmt = PromptFormat(kind="chat", instruction="Answer.")
    free = generate(bpe_lm, fmt, ASKS, 24)
    assert not any(derives(bounded, t) for t in free.texts)
    got = generate(bpe_lm, fmt, ASKS, 120, batch_size=3, json_schema=grammar_guide(bounded))
    assert all(derives(bounded, t) for t in got.texts), got.texts
