"""How fast can greedy extraction that reproduces fp32's outputs get on this CPU? A lower bound.

Issue 17 asks for greedy generation on a JSON-extraction test set >= 5x faster than transformers
fp32 with >= 98% identical outputs. Paths that compute in lower precision (int8 layers, CT2 int8,
onnxruntime's int8 weights with fp32 activations) kept 55-85% of the outputs
(``extraction_alone.json``, ``extraction_probe.json``): one near tie anywhere in a ~30-token answer
changes the rest of it. An exact path has to run fp32's arithmetic on every position it keeps, so
it is bounded below by two costs measured here on the extraction student, in fp32, one process:

* the prompt's forward after the shared system turn (whose cache can be reused), and
* the answer's tokens, each of them through an fp32 forward with the cache: at best all of them
  in the prompt's forward, as if every token had been drafted right, at no cost, before it ran.

For each test input, ``bound`` is one fp32 forward over the prompt after the system turn and the
whole answer (every kept position computed once, in the largest product), against the same
input's ``model.generate`` time (transformers' own greedy generation of the whole prompt, the
baseline of ``extraction_alone.py``). Beside it, what decoding with drafts of ``k`` tokens would
cost if every draft were free and right: ``suffix_prefill + n_tokens * forward(k + 1) / (k + 1)``.
The script prints the mean bound's speed-up over the baseline: no path that computes fp32's
answers with transformers' fp32 forwards can beat it on this machine.

    HF_HUB_OFFLINE=1 PYTHONPATH=src:. python benchmarks/extraction_bound.py RUNX --n 40

RUNX is a finished run of ``benchmarks/extraction_run.py``. Exits 1 if the timed forwards do not
reproduce ``model.generate``'s answer (the pieces must be the same computation); ``--break`` makes
them answer their second choice at the first token, which that check must catch.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from benchmarks.extraction_alone import held_out_chats
from potstill.engines import load_engine
from potstill.models.prompting import encode_prompt, stop_token_ids
from potstill.students import student_format

WIDTHS = (1, 4, 16)  # tokens per cached forward: 1 = plain decoding, k + 1 = a verify of k drafts


def timed(fn, reps: int = 3) -> float:
    """Median seconds of ``fn()`` over ``reps`` calls."""
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def common_prefix(seqs: list[list[int]]) -> int:
    n = min(len(s) for s in seqs)
    for i in range(n):
        if any(s[i] != seqs[0][i] for s in seqs):
            return i
    return n


@torch.inference_mode()
def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("run", type=Path)
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--out", type=Path, help="default: extraction_bound.json beside this script (not with --break)")
    ap.add_argument("--break", dest="broken", action="store_true",
                    help="the cached forwards' first answer token is their second choice (the check must fail)")
    a = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    run = a.run.resolve()
    task, msgs = held_out_chats(run, a.n)
    max_new = task.cfg.max_output_tokens
    e = load_engine(spec=str(run / "student"), device="cpu", name="transformers")
    model, tok = e.lm.model, e.tokenizer
    model.eval()
    fmt = student_format(e, task)
    prompts = [encode_prompt(tok, fmt, fmt.prefix() + fmt.query(tok, m), first=True) for m in msgs]
    shared = common_prefix(prompts)
    stops = stop_token_ids(tok, model.generation_config)

    def forward(ids: list[int], cache=None):
        return model(input_ids=torch.tensor([ids]), past_key_values=cache, use_cache=True)

    base = forward(prompts[0][:shared])  # the system turn's cache, reused by every input below
    rows, failures = [], []
    for i, p in enumerate(prompts):
        ids = torch.tensor([p])
        model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new, do_sample=False)  # warm
        t0 = time.perf_counter()
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new, do_sample=False)
        gen_s = time.perf_counter() - t0
        answer = out[0, len(p):].tolist()
        n_tok = len(answer)
        suffix = p[shared:]
        base_copy_s = timed(lambda: copy.deepcopy(base.past_key_values), reps=3)
        suffix_s = timed(lambda: forward(suffix, copy.deepcopy(base.past_key_values)), reps=3) - base_copy_s
        # The answer's tokens through cached forwards: check that the pieces give generate's answer.
        cache = copy.deepcopy(base.past_key_values)
        logits = forward(suffix, cache).logits[0, -1]
        mine = []
        for step_i in range(n_tok):
            t = int(logits.topk(2).indices[1] if a.broken and step_i == 0 else logits.argmax())
            mine.append(t)
            if t in stops:
                break
            logits = forward([t], cache).logits[0, -1]
        if mine != answer[: len(mine)] or len(mine) != n_tok:
            failures.append(f"input {i}: cached forwards gave another answer than model.generate")
        # Cost per kept token of one cached forward over w tokens, at this input's length.
        per_token = {}
        full = copy.deepcopy(base.past_key_values)
        forward(suffix, full)
        copy_s = timed(lambda: copy.deepcopy(full), reps=3)  # each timed forward below starts from a copy
        for w in WIDTHS:
            span = (answer + answer)[:w] if answer else [0] * w

            def step(span=span):
                c = copy.deepcopy(full)
                forward(span, c)
            per_token[w] = max(timed(step, reps=3) - copy_s, 1e-6) / w
        best_w = min(per_token, key=per_token.get)
        drafted = suffix_s + n_tok * per_token[best_w]
        whole = suffix + answer[:-1]  # the last answer token is read from the forward before it
        bound = timed(lambda: forward(whole, copy.deepcopy(base.past_key_values)), reps=3) - base_copy_s
        rows.append(dict(prompt_tokens=len(p), shared_tokens=shared, answer_tokens=n_tok, generate_s=gen_s,
                         suffix_prefill_s=suffix_s, per_token_s={str(k): v for k, v in per_token.items()},
                         best_width=best_w, drafted_bound_s=drafted, bound_s=bound))
        print(f"{i}: {len(p)} prompt tokens ({shared} shared), {n_tok} answer tokens: generate {gen_s * 1e3:.0f} ms, "
              f"suffix prefill {suffix_s * 1e3:.0f} ms, per token {per_token[1] * 1e3:.1f} ms at 1 / "
              f"{per_token[best_w] * 1e3:.1f} ms at {best_w} (drafted bound {drafted * 1e3:.0f} ms), "
              f"one forward over prompt and answer {bound * 1e3:.0f} ms", flush=True)
    mean = {k: statistics.fmean(r[k] for r in rows) for k in ("generate_s", "suffix_prefill_s", "drafted_bound_s", "bound_s")}
    result = {"run": str(run), "n": len(rows), "max_new_tokens": max_new, "cpus": os.cpu_count(),
              "torch": torch.__version__, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "mean": mean, "bound_speedup": mean["generate_s"] / mean["bound_s"],
              "drafted_bound_speedup": mean["generate_s"] / mean["drafted_bound_s"],
              "prefill_share_of_5x_budget": mean["suffix_prefill_s"] / (mean["generate_s"] / 5),
              "rows": rows, "failures": failures}
    out = a.out or (None if a.broken else Path(__file__).with_suffix(".json"))
    if out is not None:
        out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"mean: generate {mean['generate_s'] * 1e3:.0f} ms, suffix prefill {mean['suffix_prefill_s'] * 1e3:.0f} ms "
          f"({result['prefill_share_of_5x_budget']:.0%} of the 5x budget); free drafts of {max(WIDTHS) - 1}: "
          f"{mean['drafted_bound_s'] * 1e3:.0f} ms ({result['drafted_bound_speedup']:.2f}x); one forward over prompt "
          f"and answer: {mean['bound_s'] * 1e3:.0f} ms, at most {result['bound_speedup']:.2f}x")
    for f in failures:
        print("FAIL:", f, file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
