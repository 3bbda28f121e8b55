"""A GPU server's first requests after warming: the served student's calls on one engine thread
(warm-up and batcher share CUDA graphs) against warm-up in the main thread and requests in the
batcher's (torch keeps CUDA graphs per thread, so the batcher recorded them again).

    PYTHONPATH=src:. python benchmarks/serve_thread.py --texts texts.jsonl --out serve_thread.json
    PYTHONPATH=src:. python benchmarks/serve_thread.py --tiny     # CPU smoke run (no CUDA graphs there)

(texts.jsonl: ``gpu_generation.bbc_texts(96)``, the default.) A SmolLM2-135M-shaped model with random
bf16 weights served as ``potstill serve`` serves a free-text student with ``serve.compile`` (static
caches, the compiled step's CUDA graphs; 64 new tokens, the system turn cached). Each variant in a
fresh process of its own, one after the other: ``ServedStudent.warm`` from the main thread on all
texts with ``--batch``, then ``--n`` inputs sent twice through a ``Batcher`` at concurrency 1 (ms
per request, the first pass and the second), and the CUDA memory torch reserved after each step.

- ``caller-threads``: ``ServedStudent`` runs each call in the thread that makes it (the code before);
- ``engine-thread``: today's ``ServedStudent`` (its own thread for every call).

Correctness (exit 1 past it, after writing the JSON): both variants' answers, input by input; where
they part, the eager bf16 model's own token may lead by at most ``gpu_generation.MAX_GAP`` nats.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.checks import exit_on_failures
from benchmarks.gpu_generation import MAX_GAP, divergence_gaps, load_texts, tiny_model
from benchmarks.serve_gpu import sync
from benchmarks.serve_gpu_generation import served_student

VARIANTS = ("caller-threads", "engine-thread")


def reserved_mib() -> float:
    return torch.cuda.memory_reserved() / 2**20 if torch.cuda.is_available() else 0.0


def child(a: argparse.Namespace) -> int:
    """One variant in this process; its JSON to ``a.out``."""
    from potstill.models.static_decode import StaticCaches
    from potstill.serve.engine import Batcher, ServedStudent

    served = served_student(a.model, "cpu" if a.tiny else "cuda", True, a.max_new)
    if served.engine.static is None:  # a CPU: compile sets static caches on CUDA only
        served.engine.static = StaticCaches.for_model(served.engine.lm.model, compile=True)
        served = ServedStudent(served.engine, served.task)
    if a.child == "caller-threads":
        served._pool = None  # each call in its caller's thread, as before
    msgs = [[{"role": "user", "content": t}] for t in load_texts(False, a.texts)]
    t0 = time.perf_counter()
    served.warm(msgs, a.batch)
    sync()
    warm_s, after_warm = time.perf_counter() - t0, reserved_mib()
    b = Batcher(served, a.batch, 2.0)
    passes, answers = [], []
    try:
        for _ in range(2):
            ms = []
            for m in msgs[: a.n]:
                sync()
                t1 = time.perf_counter()
                ans = b.submit(m).result()
                sync()
                ms.append(1000 * (time.perf_counter() - t1))
                answers.append([ans.output, ans.tokens])
            passes.append(ms)
    finally:
        b.close()
    print(f"{a.child}: warm {warm_s:.1f} s; first pass p50 {statistics.median(passes[0]):.1f} ms, second "
          f"{statistics.median(passes[1]):.1f} ms; reserved {after_warm:.0f} -> {reserved_mib():.0f} MiB", flush=True)
    Path(a.out).write_text(json.dumps({"variant": a.child, "warm_s": warm_s, "ms_first_pass": passes[0],
                                       "ms_second_pass": passes[1], "reserved_mib_after_warm": after_warm,
                                       "reserved_mib_after_requests": reserved_mib(), "answers": answers}) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--texts", help="JSONL with a 'text' per line (default: gpu_generation.bbc_texts(96))")
    ap.add_argument("--batch", type=int, default=8, help="serve.batch_size")
    ap.add_argument("--max-new", type=int, default=64)
    ap.add_argument("--n", type=int, default=8, help="requests per pass (two passes)")
    ap.add_argument("--tiny", action="store_true", help="the tests' tiny Llama on the CPU (smoke run)")
    ap.add_argument("--work", help="folder for the model, texts and each variant's JSON (default: a new temporary one)")
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    ap.add_argument("--out")
    a = ap.parse_args(argv)
    if a.child:
        return child(a)
    if a.tiny:
        a.batch, a.max_new, a.n = min(a.batch, 4), min(a.max_new, 12), min(a.n, 4)
    work = Path(a.work or tempfile.mkdtemp())
    work.mkdir(parents=True, exist_ok=True)
    if a.tiny:
        a.model = tiny_model(work / "tiny")
    else:
        from benchmarks.serve_split_probe import smol_shaped

        a.model = smol_shaped(work / "smol")
    if a.texts is None:  # the children read the same texts from a file
        a.texts = str(work / "texts.jsonl")
        Path(a.texts).write_text("".join(json.dumps({"text": t}) + "\n" for t in load_texts(a.tiny, None)))
    runs = {}
    for v in VARIANTS:
        cache = work / f"cache-{v}"  # empty compile caches for each
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(cache / "inductor"), "TRITON_CACHE_DIR": str(cache / "triton")}
        cmd = [sys.executable, __file__, "--child", v, "--model", a.model, "--texts", a.texts, "--batch", str(a.batch),
               "--max-new", str(a.max_new), "--n", str(a.n), "--out", str(work / f"{v}.json")] + ["--tiny"] * a.tiny
        if subprocess.run(cmd, env=env).returncode:
            print(f"{v} failed", file=sys.stderr)
            return 2
        runs[v] = json.loads((work / f"{v}.json").read_text())

    served = served_student(a.model, "cpu" if a.tiny else "cuda", False, a.max_new)  # eager: the judge
    msgs = [[{"role": "user", "content": t}] for t in load_texts(False, a.texts)][: a.n] * 2
    ref, got = runs["caller-threads"]["answers"], runs["engine-thread"]["answers"]
    gaps = [d["gap"] for d in divergence_gaps(served.engine, served.fmt, msgs, ref, got)]
    same = sum(x[1] == y[1] for x, y in zip(ref, got))
    failures = []
    if gaps and max(gaps) > MAX_GAP:
        failures.append(f"engine-thread parts from caller-threads where the eager model's own token led by "
                        f"{max(gaps):.2f} nats (> {MAX_GAP})")
    for v, r in runs.items():
        print(f"{v:15s} first pass p50 {statistics.median(r['ms_first_pass']):7.1f} ms, second "
              f"{statistics.median(r['ms_second_pass']):7.1f} ms; CUDA reserved after requests "
              f"{r['reserved_mib_after_requests']:.0f} MiB")
    print(f"same answers {same}/{len(ref)}")
    out = {"device": torch.cuda.get_device_name() if not a.tiny else platform.processor() or "cpu",
           "torch": torch.__version__, "argv": sys.argv[1:], "batch": a.batch, "max_new": a.max_new, "n": a.n,
           "model": "tiny Llama" if a.tiny else "random SmolLM2-135M shape", "identical": f"{same}/{len(ref)}",
           "divergence_gaps": gaps, "failures": failures,
           "variants": {v: {k: x for k, x in r.items() if k != "answers"} for v, r in runs.items()}}
    if a.out:
        Path(a.out).write_text(json.dumps(out, indent=1) + "\n")
    exit_on_failures(failures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
