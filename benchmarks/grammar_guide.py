"""The host work of guided decoding under a GBNF grammar (vLLM's ``guided_grammar``,
``models.grammar_constraint``) against the same language as a JSON Schema, per guided row and step.

    HF_HUB_OFFLINE=1 PYTHONPATH=src:. python benchmarks/grammar_guide.py [--rounds 5]

As ``benchmarks/guide_host.py``, without a model in the loop: the bundled SmolLM2-135M-Instruct
answers the 8 invoices of ``examples/data/invoices.jsonl`` greedily under
``examples/vllm-extraction.yaml``'s schema once, then each guide replays those answers step by step
(``guide_host.replay``: each live row's candidates are its next token first, then 31 others), in
batches of 1 and 8, taking turns for ``--rounds`` rounds. Pairs that hold one language:

* ``schema``: the invoice schema through the JSON automaton, against ``grammar``: the same object
  written in GBNF (the three keys in any order, the date's pattern, JSON strings and numbers);
* ``any-json schema``: the empty schema (any JSON value), against ``any-json grammar``: a JSON
  grammar in GBNF as llama.cpp users write them.

Correctness (exit 1): every guide, at every row-step, keeps the answer's next token (each answer
was decoded under the schema, and each grammar accepts it).

Then ``examples/vllm-text-to-sql.yaml`` end to end: the same untrained student answers its 12
questions greedily with and without its ``task.grammar`` (batches of 4), and the task's validation
counts the answers the grammar derives; exit 1 if a guided one is neither derived nor, cut at the
task's token budget, a start the grammar accepts.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
from pathlib import Path

from benchmarks.guide_host import _machine, invoice_answers, replay
from potstill.models.generation import generate
from potstill.models.grammar_constraint import compile_grammar, derives, grammar_guide
from potstill.students import student_format
from potstill.tasks import get_task

ROOT = Path(__file__).resolve().parents[1]

COMMON = r'''
ws ::= [ \t\n\r]*
string ::= "\"" ([^"\\\x00-\x1F] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F]{4}))* "\""
number ::= "-"? ("0" | [1-9] [0-9]*) ("." [0-9]+)? ([eE] [-+]? [0-9]+)?
'''
_KEYS = {"vendor": '"\\"vendor\\"" ws ":" ws string',
         "date": '"\\"date\\"" ws ":" ws "\\"" [0-9]{4} "-" [0-9]{2} "-" [0-9]{2} "\\""',
         "total": '"\\"total\\"" ws ":" ws number'}
INVOICE_GBNF = ("root ::= \"{\" ws (" + " | ".join(
    ' ws "," ws '.join(f"({_KEYS[k]})" for k in order) for order in itertools.permutations(_KEYS)) +
    ") ws \"}\" ws" + COMMON)
ANY_JSON_GBNF = r'''
root ::= ws value ws
value ::= object | array | string | number | "true" | "false" | "null"
object ::= "{" ws (string ws ":" ws value (ws "," ws string ws ":" ws value)*)? ws "}"
array ::= "[" ws (value (ws "," ws value)*)? ws "]"
''' + COMMON


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--student", default="bundled:smollm2-135m-instruct")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--out", default=str(Path(__file__).with_suffix(".json")))
    args = ap.parse_args()

    lm, _, schema, g, ends, answers = invoice_answers(args.student, args.max_new_tokens)
    tok = lm.tokenizer
    compile_s = {}
    for name, text in (("grammar", INVOICE_GBNF), ("any-json grammar", ANY_JSON_GBNF)):
        t = time.perf_counter()
        compile_grammar.__wrapped__(text)  # uncached: the cost of a request's first use of a grammar
        compile_s[name] = round(1e3 * (time.perf_counter() - t), 2)
    failures = [f"{name} does not derive answer {i}" for name, text in (("grammar", INVOICE_GBNF),
                                                                       ("any-json grammar", ANY_JSON_GBNF))
                for i, a in enumerate(g.texts) if not derives(text, a)]
    guides = {"schema": schema, "grammar": grammar_guide(INVOICE_GBNF),
              "any-json schema": {}, "any-json grammar": grammar_guide(ANY_JSON_GBNF)}
    results: dict[str, dict[str, list[float]]] = {f"b{b}": {w: [] for w in guides} for b in (1, 8)}
    for _ in range(args.rounds):
        for b in (1, 8):
            batches = [answers[i: i + b] for i in range(0, len(answers), b)]
            for name, guide in guides.items():
                spent, rows, wrong = 0.0, 0, 0
                for batch in batches:
                    s, r, picks = replay(tok, guide, ends, batch, "all", [])
                    spent, rows = spent + s, rows + r
                    wrong += sum(j != 0 for p in picks for j in p)
                results[f"b{b}"][name].append(1e6 * spent / rows)
                if wrong:
                    failures.append(f"{name} at batch {b}: {wrong} row-steps did not keep the answer's next token")
    sql = _text_to_sql(lm, failures)
    summary = {b: {w: round(statistics.median(v), 2) for w, v in ways.items()} for b, ways in results.items()}
    ratio = {b: {"grammar / schema": round(s["grammar"] / s["schema"], 2),
                 "any-json grammar / schema": round(s["any-json grammar"] / s["any-json schema"], 2)}
             for b, s in summary.items()}
    out = {"student": lm.identity, "answers": g.texts, "answer_tokens": [len(a) for a in answers],
           "rounds": args.rounds, "grammar_compile_ms": compile_s, "us_per_row_step_median": summary,
           "ratios": ratio, "us_per_row_step_rounds": results, "text_to_sql": sql, "failures": sorted(set(failures)),
           "machine": _machine()}
    Path(args.out).write_text(json.dumps(out, indent=2, ensure_ascii=False) + "\n")
    print(json.dumps({k: out[k] for k in ("answer_tokens", "grammar_compile_ms", "us_per_row_step_median", "ratios",
                                          "failures")}, indent=2))
    print(json.dumps({k: v for k, v in sql.items() if k != "answers"}, indent=2))
    return 1 if failures else 0


def _text_to_sql(lm, failures: list[str]) -> dict:
    """The text-to-SQL preset's questions answered by the untrained student, free and guided."""
    from potstill.config import load_config
    from potstill.models.grammar_constraint import GrammarPrefix, grammar_guide

    cfg = load_config(ROOT / "examples" / "vllm-text-to-sql.yaml")
    task = get_task(cfg.task)
    questions = [[{"role": "user", "content": json.loads(line)["input"]}]
                 for line in (ROOT / "examples" / "data" / "questions.jsonl").read_text().splitlines()]
    fmt = student_format(lm, task)
    out: dict = {}
    for way, guide in (("free", None), ("guided", grammar_guide(cfg.task.grammar))):
        t = time.perf_counter()
        g = generate(lm, fmt, questions, cfg.task.max_output_tokens, batch_size=4, json_schema=guide)
        secs = time.perf_counter() - t
        problems = [task.validate(task.parse(x)) for x in g.texts]
        cut = [p is not None and n >= cfg.task.max_output_tokens and GrammarPrefix(cfg.task.grammar).feed(x.strip())
               for p, n, x in zip(problems, g.output_tokens, g.texts)]
        out[way] = {"derived": sum(p is None for p in problems), "cut_at_budget": sum(cut), "of": len(problems),
                    "seconds": round(secs, 2),
                    "tokens": sum(g.output_tokens), "ms_per_token": round(1e3 * secs / max(1, sum(g.output_tokens)), 1)}
        out.setdefault("answers", {})[way] = g.texts
        if way == "guided":
            failures += [f"guided SQL answer {i} not derived: {p}" for i, (p, c) in enumerate(zip(problems, cut))
                         if p is not None and not c]
    return out


if __name__ == "__main__":
    sys.exit(main())
