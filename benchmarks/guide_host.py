"""The guide's own host work per guided row and step (``json_guide.JsonSchemaLogits.pick``), each of
its levers switched off in turn, side by side in one process on the same answers.

    HF_HUB_OFFLINE=1 PYTHONPATH=src:. python benchmarks/guide_host.py [--rounds 7]

On a GPU, a guided step replays its CUDA graph and then waits for the host to pick each row's
token: in a batch of 8 the guide was a fifth of the step on an H100 (``guided_json_gpu.json``), and
it grows with the rows where the GPU's step hardly does. So its cost is measured here alone, on the
CPU, without a model in the loop: the bundled SmolLM2-135M-Instruct answers the 8 invoices of
``examples/data/invoices.jsonl`` greedily under ``examples/vllm-extraction.yaml``'s schema once
(untrained, the case guided decoding is for), then each way replays those answers step by step,
batched 1 and 8: at every step each live row's candidates are its next token behind ``--behind``
other tokens that do not fit (0: the model's own choice fits at once, the common case), as the
decoding loop hands them over.

Ways (each lever of 2026-12-05 switched off alone, then all of them, the guide before that day):
``all``; ``no-native-decode`` (windows decoded through transformers' ``decode`` instead of the
``tokenizers`` library's own); ``no-kept`` (the next step reads the kept token again instead of
taking ``pick``'s reading); ``copy.copy`` (a reading's frames copied through ``copy.copy``);
``before`` (all three off). Each round runs every way once, in turns. Correctness (exit 1): every
way picks the same places, each answer's next token where it fits.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from potstill.config import TaskConfig
from potstill.models import json_constraint, json_guide
from potstill.models.generation import generate
from potstill.models.loading import load_lm
from potstill.students import student_format
from potstill.tasks import get_task

ROOT = Path(__file__).resolve().parents[1]
WAYS = ("all", "no-native-decode", "no-kept", "copy.copy", "before")


class _Forget(dict):
    """A ``_kept`` that keeps nothing: the next step reads its token again."""

    def __setitem__(self, key: Any, value: Any) -> None:
        pass


def _copy_frames(self: Any) -> Any:
    """``_Parse.copy`` as before 2026-12-05: each frame through ``copy.copy``."""
    new = json_constraint._Parse.__new__(json_constraint._Parse)
    new.root, new.done, new.ws, new.forks = self.root, self.done, self.ws, []
    new.stack, twins = [], {}
    for f in self.stack:
        g = copy.copy(f)
        if isinstance(f, json_constraint._Object):
            g.seen = set(f.seen)
        twins[id(f)] = g
        new.stack.append(g)
    for g in new.stack:
        if isinstance(g, json_constraint._String) and g.key_of is not None:
            g.key_of = twins.get(id(g.key_of), g.key_of)
    return new


def replay(tok: Any, schema: dict, ends: list[int], answers: list[list[int]], way: str,
           misfits: list[int]) -> tuple[float, int, list]:
    """Seconds in ``pick``, live row-steps, and its picks, replaying ``answers`` (each ending in an
    end token) as one batch, each step's candidates the ``misfits`` and then the answer's next token."""
    guide = json_guide.JsonSchemaLogits(tok, schema, 0, ends)
    if way in ("no-native-decode", "before"):
        guide._native = None
    if way in ("no-kept", "before"):
        guide._kept = _Forget()
    plain_copy = json_constraint._Parse.copy
    if way in ("copy.copy", "before"):
        json_constraint._Parse.copy = _copy_frames
    try:
        spent, row_steps, picks = 0.0, 0, []
        for n in range(max(map(len, answers))):
            gens = [a[:n] for a in answers]
            cands = [misfits + [a[n] if n < len(a) else ends[0]] + list(range(100, 131 - len(misfits)))
                     for a in answers]
            live = [not set(ends) & set(g) for g in gens]
            t = time.perf_counter()
            got = guide.pick(gens, cands)
            spent += time.perf_counter() - t
            picks.append([j for j, alive in zip(got, live) if alive])
            row_steps += sum(live)
        return spent, row_steps, picks
    finally:
        json_constraint._Parse.copy = plain_copy


def invoice_answers(student: str, max_new_tokens: int) -> tuple[Any, Any, dict, Any, list[int], list[list[int]]]:
    """The student (on the CPU) answering the 8 invoices of ``examples/vllm-extraction.yaml``
    greedily under its schema: (lm, task, schema, the generation, the end tokens, each answer's
    tokens ending in an end token, so a row that has ended is done with, as in decoding)."""
    preset = yaml.safe_load((ROOT / "examples" / "vllm-extraction.yaml").read_text())
    task = get_task(TaskConfig.model_validate(preset["task"]))
    schema = task.cfg.json_schema
    inputs = [json.loads(line)["input"] for line in (ROOT / "examples" / "data" / "invoices.jsonl").read_text().splitlines()]
    lm = load_lm(student, device="cpu")
    tok = lm.tokenizer
    g = generate(lm, student_format(lm, task), [[{"role": "user", "content": t}] for t in inputs], max_new_tokens,
                 batch_size=len(inputs), json_schema=schema)
    ends = sorted({int(tok.eos_token_id), *(t for t in tok.convert_tokens_to_ids(["<|im_end|>"]) if t is not None)})
    answers = [list(t) if set(t) & set(ends) else [*t, ends[0]] for t in g.tokens]
    return lm, task, schema, g, ends, answers


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--student", default="bundled:smollm2-135m-instruct")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--behind", type=int, default=0, help="tokens that do not fit, tried before the next one")
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--out", default=str(Path(__file__).with_suffix(".json")))
    args = ap.parse_args()

    lm, task, schema, g, ends, answers = invoice_answers(args.student, args.max_new_tokens)
    tok = lm.tokenizer
    # Tokens that fit nowhere in JSON (control characters, raw even inside a string), tried first.
    misfits = [t for t in range(len(tok)) if tok.decode([t]) in [chr(c) for c in range(1, 9)]][: args.behind]
    results: dict[str, dict[str, list[float]]] = {f"b{b}": {w: [] for w in WAYS} for b in (1, 8)}
    failures: list[str] = []
    reference: dict[str, list] = {}
    for _ in range(args.rounds):
        for b in (1, 8):
            batches = [answers[i : i + b] for i in range(0, len(answers), b)]
            for way in WAYS:
                spent, rows, picks = 0.0, 0, []
                for batch in batches:
                    s, r, p = replay(tok, schema, ends, batch, way, misfits)
                    spent, rows = spent + s, rows + r
                    picks.append(p)
                results[f"b{b}"][way].append(1e6 * spent / rows)
                if reference.setdefault(f"b{b}", picks) != picks:
                    failures.append(f"{way} at batch {b} picks other places than 'all'")
                wrong = sum(j != len(misfits) for p in picks for step in p for j in step)
                if wrong:  # each answer was decoded under the guide, so its next token fits
                    failures.append(f"{way} at batch {b}: {wrong} row-steps did not pick the answer's next token")
    summary = {b: {w: round(statistics.median(v), 2) for w, v in ways.items()} for b, ways in results.items()}
    speedup = {b: round(s["before"] / s["all"], 2) for b, s in summary.items()}
    out = {"student": lm.identity, "answers": len(answers), "answer_tokens": [len(a) for a in answers],
           "behind": len(misfits), "rounds": args.rounds, "us_per_row_step_median": summary,
           "us_per_row_step_rounds": results, "before_over_all": speedup, "failures": sorted(set(failures)),
           "machine": _machine()}
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({k: out[k] for k in ("answer_tokens", "us_per_row_step_median", "before_over_all", "failures")},
                     indent=2))
    return 1 if failures else 0


def _machine() -> dict:
    import os
    import platform

    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "load_avg": [round(x, 2) for x in os.getloadavg()]}


if __name__ == "__main__":
    sys.exit(main())
