"""A GPU server's static caches at prompt lengths it did not warm: a decoding step that takes the
cache's length from transformers' mask (a Python int: a compile per length, so a warmed server
sends a longer request to the dynamic cache) against one that builds its own mask with the length
dynamic (one compile for every length, so a longer request gets a static cache of its own).

    PYTHONPATH=src:. python benchmarks/static_lengths.py --texts texts.jsonl --batch 8 --out static_lengths.json
    PYTHONPATH=src:. python benchmarks/static_lengths.py --tiny            # CPU smoke run of the same code
    PYTHONPATH=src:. python benchmarks/static_lengths.py --tiny --break-static   # the gate failing

(texts.jsonl: ``gpu_generation.bbc_texts(96)``, the default.) A SmolLM2-135M-shaped model with
random bf16 weights (``--tiny``: the tests' tiny Llama in fp32 on the CPU) served as ``potstill
serve`` serves a free-text student with ``serve.compile``. Each variant runs in a fresh process of
its own with empty inductor and Triton caches: ``ServedStudent.warm`` on the texts with ``--batch``
(timed, graphs counted), then ``--rounds`` batches of each bucket of rows at the warmed length,
then at longer prompts, ``--long`` texts joined into one (3 and 6: ~510 and ~1,020 text tokens
against ~170, caches of 1,024 and 2,048 positions against 512), each bucket's first batch reported
apart (a new cache records its CUDA graph there).

- ``int-length``: transformers builds the step's mask (``StaticCaches.mask_kind = None``, the code
  before): a longer request decodes on the dynamic cache;
- ``any-length``: today's ``StaticCaches`` (sdpa: the step's own boolean mask, lengths dynamic).

Correctness (exit 1 past it, after writing the JSON): each answer from both variants; where they
part, the eager bf16 model scores both tokens after the shared start and ``int-length``'s may lead
by at most ``gpu_generation.MAX_GAP`` nats (a near tie), as in ``gpu_generation.py``; and no graph
may compile after warming in either variant. ``--break-static`` breaks the copied prefix in
``any-length`` only.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
from pathlib import Path
from typing import Any

import torch

from benchmarks.checks import finish
from benchmarks.gpu_generation import MAX_GAP, divergence_gaps, load_texts
from benchmarks.serve_gpu_generation import served_student
from benchmarks.static_rows import (buckets, common_args, prepare, run_variants, served_compiled, timed_batches,
                                    warm_counted)

VARIANTS = ("int-length", "any-length")


def long_texts(texts: list[str], join: int, n: int) -> list[str]:
    """``n`` prompts of ``join`` consecutive texts each (wrapping around)."""
    return [" ".join(texts[(i * join + j) % len(texts)] for j in range(join)) for i in range(n)]


def child(a: argparse.Namespace) -> int:
    """One variant in this process: warm, then time each bucket at each length; its JSON to ``a.out``."""
    from torch._dynamo.utils import counters

    served, load_s = served_compiled(a, "any-length")
    engine = served.engine
    if a.child == "int-length":
        engine.static.mask_kind = None
    texts = load_texts(False, a.texts)
    graphs0 = counters["stats"]["unique_graphs"]
    warm_s, graphs = warm_counted(served, texts, a)
    warmed = sorted(engine.static._caches)
    tok = engine.tokenizer
    results: dict[str, Any] = {}
    answers: dict[str, list] = {}
    for join in [1, *a.long]:
        prompts = texts if join == 1 else long_texts(texts, join, max(buckets(a.batch)) * a.rounds)
        tokens = statistics.median(len(tok.encode(t)) for t in prompts)
        msgs = [[{"role": "user", "content": t}] for t in prompts]
        for r in buckets(a.batch):
            secs, out_all = timed_batches(served, msgs, r, a.rounds)
            key = f"join{join}_rows{r}"
            results[key] = {"prompt_tokens_p50": tokens, "first_ms": 1000 * secs[0],
                            "later_ms_p50": 1000 * statistics.median(secs[1:] or secs), "ms": [1000 * s for s in secs]}
            answers[key] = out_all
            print(f"  {key:14s} ~{tokens:5.0f} prompt tokens: first {results[key]['first_ms']:8.1f} ms, "
                  f"later p50 {results[key]['later_ms_p50']:8.1f} ms", flush=True)
    after = counters["stats"]["unique_graphs"] - graphs0 - graphs
    Path(a.out).write_text(json.dumps({"variant": a.child, "load_s": load_s, "warm_s": warm_s, "graphs": graphs,
                                       "graphs_after_warm": after, "caches_warmed": warmed,
                                       "caches_at_end": sorted(engine.static._caches), "batches": results,
                                       "answers": answers}) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = common_args(__doc__, VARIANTS, 8, "batches per bucket of rows and length", "any-length")
    ap.add_argument("--long", type=int, nargs="*", default=[3, 6], help="texts joined into one longer prompt")
    a = ap.parse_args(argv)
    if a.child:
        return child(a)
    if a.tiny:
        a.long = [40, 80]  # the tiny texts are a few words: 40 and 80 of them past 256 and 512 positions
    device = "cpu" if a.tiny else "cuda"
    work = prepare(a)
    runs = run_variants(__file__, VARIANTS, work, a, ["--long", *map(str, a.long)])
    if runs is None:
        return 2

    served = served_student(a.model, device, False, a.max_new)  # eager: the judge of departures
    texts = load_texts(False, a.texts)
    failures, compared = [], {}
    ref, got = runs["int-length"]["answers"], runs["any-length"]["answers"]
    for key in ref:
        join, r = (int(x) for x in key[len("join"):].split("_rows"))
        prompts = texts if join == 1 else long_texts(texts, join, max(buckets(a.batch)) * a.rounds)
        msgs = [[{"role": "user", "content": t}] for t in prompts[: len(ref[key])]]
        gaps = [d["gap"] for d in divergence_gaps(served.engine, served.fmt, msgs, ref[key], got[key])]
        compared[key] = {"identical": f"{sum(x[1] == y[1] for x, y in zip(ref[key], got[key]))}/{len(ref[key])}",
                         "divergence_gaps": gaps}
        if gaps and max(gaps) > MAX_GAP:
            failures.append(f"{key}: any-length parts from int-length where the eager model's own token led "
                            f"by {max(gaps):.2f} nats (> {MAX_GAP})")
    for v, run in runs.items():
        if run["graphs_after_warm"]:
            failures.append(f"{v}: {run['graphs_after_warm']} graphs compiled after warming (a client waited)")
        print(f"{v:10s} warm {run['warm_s']:6.1f} s, {run['graphs']} graphs, {run['graphs_after_warm']} after; "
              "first / later p50 ms: " + ", ".join(f"{k} {b['first_ms']:.0f}/{b['later_ms_p50']:.0f}"
                                                   for k, b in run["batches"].items()), flush=True)
    print("same answers: " + ", ".join(f"{k}: {c['identical']}" for k, c in compared.items()))
    out = {"device": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu",
           "torch": torch.__version__, "python": platform.python_version(), "argv": sys.argv[1:],
           "model": "random SmolLM2-135M shape" if "smol" in a.model else a.model, "batch": a.batch,
           "max_new": a.max_new, "rounds": a.rounds, "long": a.long, "compared": compared,
           "variants": {v: {k: x for k, x in run.items() if k != "answers"} for v, run in runs.items()}}
    finish(out, failures, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
