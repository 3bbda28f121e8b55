"""What a served llamacpp student's ``logprobs`` cost, and whether they are right.

``potstill serve`` answers a client's ``logprobs`` / ``top_logprobs`` with each answer token's
log-probability and the likeliest tokens at its position. Engine transformers gets them from one
teacher-forced forward over prompt + answer (``models.generation.token_logprobs``); llama-server
gives no log-probabilities of prompt tokens, so engine llamacpp's ``token_logprobs`` runs one
one-token step per answer token on the prompt and the answer before it. This times both on the
extraction student's own greedy answers (the fp32 texts of ``extraction_llamacpp.json``):

    POTSTILL_LLAMA_SERVER=... HF_HUB_OFFLINE=1 PYTHONPATH=src:. python benchmarks/llamacpp_logprobs.py RUNX --n 10

RUNX is the run of ``benchmarks/extraction_run.py`` that ``extraction_llamacpp.json`` names. Each
engine in this one process, answer by answer, 2 passes (the second timed). Exits 1 if llamacpp f32
gives any token a log-probability more than 2e-3 from transformers fp32's, or other top-5 tokens
wherever fp32's top 5 are more than 1e-3 apart.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from benchmarks.extraction_alone import held_out_chats, outputs_of
from potstill.engines import load_engine
from potstill.models.generation import token_logprobs
from potstill.models.loading import load_lm
from potstill.students import student_format

TOP = 5
TOL = 2e-3


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run", type=Path)
    ap.add_argument("--n", type=int, default=10)
    ap.add_argument("--ref", type=Path, default=Path(__file__).with_name("extraction_llamacpp.json"))
    ap.add_argument("--out", type=Path, default=Path(__file__).with_suffix(".json"))
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    run = args.run.resolve()
    ref = outputs_of(args.ref, run)
    task, msgs = held_out_chats(run, args.n)
    texts = ref["engines"]["fp32"]["texts"][: args.n]

    engines = {"llamacpp f32": load_engine("llamacpp", str(run / "student"), device="cpu", quantization="none"),
               "llamacpp q8_0": load_engine("llamacpp", str(run / "student"), device="cpu")}
    first = next(iter(engines.values()))
    fmt = student_format(first, task)
    tok = first.tokenizer
    prompts = [first._ids(fmt, [m])[0] for m in msgs]
    answers = [tok.encode(t, add_special_tokens=False) for t in texts]
    lm = load_lm(str(run / "student"), device="cpu", dtype=torch.float32)
    scorers = {"transformers fp32 (one forward)": lambda p, a: token_logprobs(lm, p, a, TOP),
               **{k: e.token_logprobs for k, e in engines.items()}}
    rows, got = {}, {}
    for name, fn in scorers.items():
        for timed in (False, True):
            secs, out = [], []
            for p, a in zip(prompts, answers):
                t0 = time.perf_counter()
                out.append(fn(p, a) if name.startswith("transformers") else fn(p, a, TOP))
                secs.append(time.perf_counter() - t0)
        got[name] = out
        rows[name] = {"mean_s": statistics.fmean(secs), "p50_s": statistics.median(secs),
                      "ms_per_answer_token": 1000 * sum(secs) / sum(len(a) for a in answers)}
    for e in engines.values():
        e.close()

    want = got["transformers fp32 (one forward)"]
    bad = []
    for name in engines:
        worst = 0.0
        for j, (g, w) in enumerate(zip(got[name], want)):
            for (lp, best), (wlp, wbest) in zip(g, w):
                worst = max(worst, abs(lp - wlp), *(abs(v - u) for (_, v), (_, u) in zip(best, wbest)))
                vals = [u for _, u in wbest]
                apart = all(a - b > 1e-3 for a, b in zip(vals, vals[1:]))
                if name.endswith("f32") and apart and [i for i, _ in best] != [i for i, _ in wbest]:
                    bad.append(f"{name}: answer {j}: top-{TOP} ids differ")
        rows[name]["max_abs_logprob_diff_vs_fp32"] = worst
        if name.endswith("f32") and worst > TOL:
            bad.append(f"{name}: a log-prob {worst:.2e} from transformers fp32's (tolerance {TOL:g})")
    base = rows["transformers fp32 (one forward)"]["mean_s"]
    for r in rows.values():
        r["vs_transformers"] = base / r["mean_s"]
    out = {"run": str(run), "n": len(answers), "answer_tokens_mean": statistics.fmean(len(a) for a in answers),
           "prompt_tokens_mean": statistics.fmean(len(p) for p in prompts), "top_logprobs": TOP, "cpus": os.cpu_count(),
           "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "engines": rows}
    args.out.write_text(json.dumps(out, indent=2))
    for k, r in rows.items():
        extra = f", max |diff| {r['max_abs_logprob_diff_vs_fp32']:.1e}" if "max_abs_logprob_diff_vs_fp32" in r else ""
        print(f"{k}: {1000 * r['mean_s']:.0f} ms per answer ({r['ms_per_answer_token']:.1f} ms a token){extra}")
    if bad:
        print("CORRECTNESS FAILED: " + "; ".join(bad[:5]), file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
