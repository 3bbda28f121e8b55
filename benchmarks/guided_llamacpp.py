"""Guided decoding on engine llamacpp (llama.cpp's own grammar sampler, fed a JSON Schema or a
grammar) against engine transformers' guide, on the CPU, side by side in one process.

    POTSTILL_LLAMA_SERVER=.../llama-server HF_HUB_OFFLINE=1 PYTHONPATH=src:. \\
        python benchmarks/guided_llamacpp.py [--rounds 3]

The untrained bundled SmolLM2-135M-Instruct (the case guidance is for) answers, greedily and one
input at a time (batch 1, the interactive case), with each engine in f32 / fp32:

* the 8 invoices of ``examples/vllm-extraction.yaml`` under its JSON Schema (``json_schema`` for
  llama-server, which converts it to a grammar itself; potstill's JSON automaton for transformers);
* the 12 questions of ``examples/vllm-text-to-sql.yaml`` under its ``task.grammar``
  (``grammar_constraint.llama_gbnf`` for llama-server; the Earley reader for transformers);

unguided too, for reference. Engine transformers runs twice: eager, and under ``torch.compile``
(``--no-compiled`` leaves that out), the baseline a user would pick where it is faster; each engine's
first pass over a case is an untimed warm-up (the compiled one compiles there). Rounds take turns
between the engines. Recorded: seconds per answer
(median over rounds), answers the task's validation accepts, answers cut at the task's token
budget, and answers the two engines write alike. Correctness (exit 1): every guided answer is
valid, or cut at the budget as a start the guide accepts; except that llama.cpp's own JSON Schema
conversion holds JSON and the schema's structure but not every keyword (a ``pattern`` it leaves
out), so a llamacpp answer under a schema may instead be JSON that the validation refuses, counted
as ``keyword_not_held``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from benchmarks.guide_host import _machine
from potstill.config import load_config
from potstill.engines import load_engine
from potstill.models.grammar_constraint import grammar_guide
from potstill.models.json_guide import text_prefix
from potstill.students import student_format
from potstill.tasks import get_task

ROOT = Path(__file__).resolve().parents[1]


def cases() -> list[tuple[str, object, list, dict]]:
    out = []
    for preset, data, guide_of in (("vllm-extraction.yaml", "invoices.jsonl", lambda c: c.task.json_schema),
                                   ("vllm-text-to-sql.yaml", "questions.jsonl", lambda c: grammar_guide(c.task.grammar))):
        cfg = load_config(ROOT / "examples" / preset)
        msgs = [[{"role": "user", "content": json.loads(line)["input"]}]
                for line in (ROOT / "examples" / "data" / data).read_text().splitlines()]
        out.append((preset.removesuffix(".yaml"), cfg, msgs, guide_of(cfg)))
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--student", default="bundled:smollm2-135m-instruct")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=str(Path(__file__).with_suffix(".json")))
    ap.add_argument("--no-compiled", dest="compiled", action="store_false",
                    help="leave out engine transformers under torch.compile")
    args = ap.parse_args()

    engines = {"transformers": load_engine("transformers", args.student, device="cpu"),
               **({"transformers+compile": load_engine("transformers", args.student, device="cpu", compile=True)}
                  if args.compiled else {}),
               "llamacpp": load_engine("llamacpp", args.student, device="cpu", quantization="none")}
    results: dict = {}
    failures: list[str] = []
    try:
        for name, cfg, msgs, guide in cases():
            task = get_task(cfg.task)
            fmt = student_format(engines["transformers"], task)
            times = {f"{e} {way}": [] for e in engines for way in ("guided", "free")}
            texts: dict[str, list[str]] = {}
            tokens: dict[str, list[int]] = {}
            for r in range(args.rounds + 1):  # round 0: the untimed warm-up
                for e, engine in engines.items():
                    for way in ("guided", "free"):
                        t0 = time.perf_counter()
                        g = engine.generate(fmt, msgs, cfg.task.max_output_tokens, batch_size=1,
                                            **({"json_schemas": [guide] * len(msgs)} if way == "guided" else {}))
                        if r:
                            times[f"{e} {way}"].append((time.perf_counter() - t0) / len(msgs))
                        texts[f"{e} {way}"], tokens[f"{e} {way}"] = g.texts, g.output_tokens
            valid = {k: sum(task.validate(task.parse(t)) is None for t in v) for k, v in texts.items()}
            kinds: dict[str, dict[str, int]] = {}
            for e in engines:
                count = kinds[e] = {"valid": 0, "cut_at_budget": 0, "keyword_not_held": 0, "wrong": 0}
                for text, n in zip(texts[f"{e} guided"], tokens[f"{e} guided"]):
                    reader = text_prefix(guide)
                    if task.validate(task.parse(text)) is None:
                        count["valid"] += 1
                    elif n >= cfg.task.max_output_tokens and reader.feed(text):
                        count["cut_at_budget"] += 1
                    elif e == "llamacpp" and "properties" in guide and _json(text):
                        count["keyword_not_held"] += 1
                    else:
                        count["wrong"] += 1
                        failures.append(f"{name}: {e}'s guided answer {text!r} is neither valid nor cut at the budget")
            med = {k: round(statistics.median(v), 4) for k, v in times.items()}
            results[name] = {
                "inputs": len(msgs), "seconds_per_answer": med, "seconds_per_answer_rounds": times, "valid": valid,
                "guided_answers": kinds, "tokens": {k: sum(v) for k, v in tokens.items()},
                "same_guided_answers": sum(a == b for a, b in zip(texts["transformers guided"], texts["llamacpp guided"])),
                "transformers_guided_over_llamacpp_guided": round(med["transformers guided"] / med["llamacpp guided"], 2),
                **({"compiled_guided_over_llamacpp_guided": round(
                    med["transformers+compile guided"] / med["llamacpp guided"], 2),
                    "best_transformers_guided_over_llamacpp_guided": round(min(
                        med["transformers guided"], med["transformers+compile guided"]) / med["llamacpp guided"], 2),
                    "compiled_guided_answers_as_eager": sum(a == b for a, b in zip(
                        texts["transformers guided"], texts["transformers+compile guided"]))}
                   if "transformers+compile" in engines else {}),
                "answers": texts}
    finally:
        for engine in engines.values():
            getattr(engine, "close", lambda: None)()
    out = {"student": args.student, "rounds": args.rounds, "results": results, "failures": failures,
           "machine": _machine()}
    Path(args.out).write_text(json.dumps(out, indent=2, ensure_ascii=False) + "\n")
    print(json.dumps({n: {k: v for k, v in r.items() if k not in ("answers", "seconds_per_answer_rounds")}
                      for n, r in results.items()}, indent=2))
    print("failures:", failures)
    return 1 if failures else 0


def _json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


if __name__ == "__main__":
    sys.exit(main())
