"""Greedy decoding on static caches with one compiled call per token (a CUDA graph each, through
``mode="reduce-overhead"``) against 8 tokens per CUDA graph replay (``static_decode.Steps``).

    PYTHONPATH=src:. python benchmarks/graph_steps.py --texts texts.jsonl --out graph_steps.json
    PYTHONPATH=src:. python benchmarks/graph_steps.py --tiny      # CPU smoke run (no CUDA graphs there)

(texts.jsonl: ``gpu_generation.bbc_texts(96)``.) A SmolLM2-135M-shaped model with random bf16
weights (``--tiny``: the tests' tiny Llama in fp32 on the CPU), served as ``potstill serve`` serves
a free-text student with ``serve.compile`` (64-token summaries, the system turn cached). Both
variants in one process, each with static caches of its own: warmed on the ``--n`` texts at batch 1
and in one batch of ``--n``, then ``--rounds`` rounds taking turns, each round answering the texts
one at a time and as one batch (ms per input, medians).

Correctness (exit 1 past it, after writing the JSON): where the variants' answers part, the eager
model scores both tokens after the shared start and the one-step variant's may lead by at most
``gpu_generation.MAX_GAP`` nats (a near tie), as in ``gpu_generation.py``; ``--break-steps``
shows it failing.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.checks import finish
from benchmarks.gpu_generation import MAX_GAP, divergence_gaps, load_texts, tiny_model
from benchmarks.serve_gpu import sync
from benchmarks.serve_gpu_generation import served_student
from benchmarks.static_rows import timed_batches

VARIANTS = {"one-step": 1, "8-steps": 8}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--texts", help="JSONL with a 'text' per line (default: gpu_generation.bbc_texts(96))")
    ap.add_argument("--n", type=int, default=8, help="texts answered, one at a time and as one batch")
    ap.add_argument("--max-new", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tiny", action="store_true", help="the tests' tiny Llama on the CPU (smoke run)")
    ap.add_argument("--only", choices=list(VARIANTS), help="one variant, warmed in a fresh process (no comparison)")
    ap.add_argument("--break-steps", action="store_true",
                    help="feed the 8-step graphs a wrong token (the gate must then fail)")
    ap.add_argument("--out")
    a = ap.parse_args(argv)
    from torch._dynamo.utils import counters

    from potstill.models.static_decode import StaticCaches, Steps

    if a.break_steps:
        real = Steps.replay

        def shifted(self: Steps) -> None:
            self.tok.sub_(1).clamp_(min=0)  # the step reads a token next to the one chosen
            real(self)

        Steps.replay = shifted  # type: ignore[method-assign]

    work = Path(tempfile.mkdtemp())
    device = "cpu" if a.tiny else "cuda"
    if a.tiny:
        model, a.max_new, a.rounds = tiny_model(work / "tiny"), min(a.max_new, 12), min(a.rounds, 2)
    else:
        from benchmarks.serve_split_probe import smol_shaped

        model = smol_shaped(work / "smol")
    served = served_student(model, device, True, a.max_new)
    engine = served.engine
    msgs = [[{"role": "user", "content": t}] for t in load_texts(a.tiny, a.texts)][: a.n]
    caches = {v: StaticCaches.for_model(engine.lm.model, compile=True, graph_steps=k) for v, k in VARIANTS.items()
              if a.only in (None, v)}
    warm_s, graphs, answers, secs = {}, {}, {}, {v: {"1": [], str(a.n): []} for v in caches}
    for v, static in caches.items():
        engine.static = static
        graphs0 = counters["stats"]["unique_graphs"]
        t0 = time.perf_counter()
        for m in msgs:
            served.answer([m])
        served.answer(msgs)
        sync()
        warm_s[v], graphs[v] = time.perf_counter() - t0, counters["stats"]["unique_graphs"] - graphs0
        print(f"{v}: warmed in {warm_s[v]:.1f} s, {graphs[v]} graphs", flush=True)
    for _ in range(a.rounds):
        for v, static in caches.items():
            engine.static = static
            one_s, one = timed_batches(served, msgs, 1, len(msgs))
            batch_s, batch = timed_batches(served, msgs, len(msgs), 1)
            secs[v]["1"] += one_s
            secs[v][str(a.n)].append(batch_s[0] / len(msgs))
            answers[v] = {"1": one, str(a.n): batch}
    ms = {v: {b: 1000 * statistics.median(s) for b, s in d.items()} for v, d in secs.items()}
    engine.static = None  # eager, dynamic cache: the judge of departures
    failures, compared = [], {}
    for b in ("1", str(a.n)) if a.only is None else ():
        ref, got = answers["one-step"][b], answers["8-steps"][b]
        gaps = [d["gap"] for d in divergence_gaps(engine, served.fmt, msgs, ref, got)]
        compared[b] = {"identical": f"{sum(x[1] == y[1] for x, y in zip(ref, got))}/{len(ref)}", "divergence_gaps": gaps}
        if gaps and max(gaps) > MAX_GAP:
            failures.append(f"batch {b}: 8-steps parts from one-step where the eager model's own token led by "
                            f"{max(gaps):.2f} nats (> {MAX_GAP})")
    for v in caches:
        print(f"{v:9s} warm {warm_s[v]:6.1f} s ({graphs[v]} graphs); ms per input: batch 1 {ms[v]['1']:.1f}, "
              f"batch {a.n} {ms[v][str(a.n)]:.1f}")
    print("same answers: " + ", ".join(f"batch {b}: {c['identical']}" for b, c in compared.items()))
    out = {"device": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu",
           "torch": torch.__version__, "argv": sys.argv[1:], "model": "random SmolLM2-135M shape" if not a.tiny else "tiny",
           "n": a.n, "max_new": a.max_new, "rounds": a.rounds, "warm_s": warm_s, "graphs_compiled_warming": graphs,
           "ms_per_input_p50": ms,
           "ms_per_input": {v: {b: [1000 * x for x in s] for b, s in d.items()} for v, d in secs.items()},
           "compared": compared}
    finish(out, failures, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
