"""A served generating student's routing embedding taken from the prefill generation runs anyway
(``generate(embed=True)``) against a second forward over the whole prompt (``engine.embed``, what
``ServedStudent.answer`` did before), side by side in one process, taking turns request by request.

    PYTHONPATH=src:. python benchmarks/serve_embed_prefill.py --n 16 --batch 8 --max-new 32 --out cpu.json  # CPU: bundled SmolLM2-135M-Instruct, fp32
    PYTHONPATH=src:. python benchmarks/serve_embed_prefill.py --random-smol --compile --texts texts.jsonl \
        --n 16 --batch 4 --max-new 64 --out gpu.json   # a GPU: SmolLM2-135M-shaped random weights, bf16, static caches

(texts.jsonl: ``gpu_generation.bbc_texts(96)``, the default.) The recorded ``serve_embed_prefill.json``
holds one CPU run and two H200 runs, each as this script writes it, under a note.

Both variants are ``ServedStudent`` as ``potstill serve`` runs a free-text student ("summarise the
news article in one sentence", ``--max-new`` tokens at most, the system turn cached) behind its
``Batcher``; only where the embedding comes from differs. Measured: latency of ``--n`` requests at
concurrency 1 through the batcher (p50 / mean, each request answered by both variants in turn, the
order alternating), and ``--n`` inputs in batches of ``--batch`` answered directly.

Correctness (exit 1 past it, after writing the JSON): both variants' outputs must be identical and
each input's two embeddings within ``MIN_COSINE`` of each other (they differ only by the float
rounding of a cached against a whole-prompt forward: bf16 on a GPU, fp32 on the CPU).
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
from benchmarks.gpu_generation import load_texts
from benchmarks.serve_gpu import sync
from benchmarks.serve_gpu_generation import served_student

MIN_COSINE = {"cpu": 0.9999, "cuda": 0.99}


def main(argv: list[str] | None = None) -> int:
    from potstill.serve.engine import Batcher

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="bundled:smollm2-135m-instruct")
    ap.add_argument("--random-smol", action="store_true", help="SmolLM2-135M-shaped random weights (bf16 on a GPU)")
    ap.add_argument("--texts", help="JSONL with a 'text' per line (default: gpu_generation.bbc_texts(96))")
    ap.add_argument("--compile", action="store_true", help="serve.compile: static caches and CUDA graphs on a GPU")
    ap.add_argument("--max-new", type=int, default=32)
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--out")
    a = ap.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    spec = a.model
    if a.random_smol:
        from benchmarks.serve_split_probe import smol_shaped

        spec = smol_shaped(Path(tempfile.mkdtemp()))
    texts = load_texts(False, a.texts)
    msgs = [[{"role": "user", "content": t}] for t in texts]
    served = served_student(spec, device, a.compile, a.max_new)
    variants = {"prefill": True, "second forward": False}

    def answer(batch: list, prefill: bool) -> list:
        served._embeds = prefill
        return served.answer(batch)

    t0 = time.perf_counter()
    warm = msgs[-a.batch:]
    served.warm(warm, a.batch)
    for v in variants.values():  # each variant's calls once (the embed forward's own shapes)
        answer(warm[:1], v)
        answer(warm, v)
    warm_s = time.perf_counter() - t0
    print(f"warm {warm_s:.1f} s", flush=True)
    lat: dict[str, list[float]] = {k: [] for k in variants}
    answers: dict[str, list] = {k: [] for k in variants}
    b = Batcher(served, a.batch, 2.0)
    try:
        for i, m in enumerate(msgs[: a.n]):
            for k in (list(variants) if i % 2 == 0 else list(variants)[::-1]):
                served._embeds = variants[k]
                sync()
                t = time.perf_counter()
                answers[k].append(b.submit(m).result())
                sync()
                lat[k].append(time.perf_counter() - t)
    finally:
        b.close()
    batched: dict[str, list[float]] = {k: [] for k in variants}
    for s in range(0, a.n, a.batch):
        for j, k in enumerate(variants if (s // a.batch) % 2 == 0 else list(variants)[::-1]):
            sync()
            t = time.perf_counter()
            answer(msgs[s : s + a.batch], variants[k])
            sync()
            batched[k].append((time.perf_counter() - t) / len(msgs[s : s + a.batch]))
    same = sum(x.output == y.output for x, y in zip(answers["prefill"], answers["second forward"]))
    cos = [float(torch.dot(x.embedding.float(), y.embedding.float()))
           for x, y in zip(answers["prefill"], answers["second forward"])]
    rows = {k: {"concurrency1_p50_ms": round(statistics.median(lat[k]) * 1e3, 2),
                "concurrency1_mean_ms": round(statistics.mean(lat[k]) * 1e3, 2),
                "concurrency1_ms": [round(x * 1e3, 1) for x in lat[k]],
                f"batch{a.batch}_ms_per_input": round(statistics.median(batched[k]) * 1e3, 2)} for k in variants}
    out = {"device": torch.cuda.get_device_name() if device == "cuda" else f"CPU ({torch.get_num_threads()} threads)",
           "torch": torch.__version__, "python": platform.python_version(), "model": "random SmolLM2-135M shape"
           if a.random_smol else a.model, "compile": a.compile, "max_new": a.max_new, "n": a.n, "warm_s": round(warm_s, 1),
           "variants": rows, "identical_outputs": f"{same}/{len(cos)}", "min_cosine_between_embeddings": min(cos),
           "p50_ratio": rows["second forward"]["concurrency1_p50_ms"] / rows["prefill"]["concurrency1_p50_ms"]}
    for k, r in rows.items():
        print(f"{k:<15} p50 {r['concurrency1_p50_ms']:8.1f} ms  mean {r['concurrency1_mean_ms']:8.1f} ms  "
              f"batch {a.batch}: {r[f'batch{a.batch}_ms_per_input']:7.1f} ms per input", flush=True)
    print(f"identical outputs {same}/{len(cos)}; smallest cosine between the two embeddings {min(cos):.6f}")
    failures = []
    if same != len(cos):
        failures.append(f"outputs differ on {len(cos) - same} inputs")
    if min(cos) < MIN_COSINE[device]:
        failures.append(f"embeddings part: cosine {min(cos):.6f} < {MIN_COSINE[device]}")
    finish(out, failures, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
