"""Student serving on one GPU: potstill's serve engine (``TransformersEngine`` behind ``Batcher``).

The quickstart's task (BBC News topic, 5 labels) on a SmolLM2-135M-shaped student (random
weights: speed does not depend on them; ``multi_gpu.py prepare`` writes one with the real
tokenizer). One request = one article prompt (real text); each answer is the label, its margin
and the embedding the router needs. Measured:
- latency at concurrency 1 (p50/p95 over ``--n`` requests, each a forward pass of batch 1);
- throughput with 8 and 32 concurrent callers, whose requests the Batcher gathers into batches;
- the bare forward (``engine.answer`` on a batch, no queue) as the floor.
vLLM is not measured: its wheel (with its own torch) does not fit the device's carry limit.

    python benchmarks/serve_gpu.py --student /tmp/mg/student --data DATA.jsonl --out serve_gpu.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

LABELS = ["business", "entertainment", "politics", "sports", "tech"]


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def main() -> None:
    from potstill.config import TaskConfig
    from potstill.models.loading import load_lm
    from potstill.serve.engine import Batcher, TransformersEngine
    from potstill.tasks import get_task

    ap = argparse.ArgumentParser()
    ap.add_argument("--student", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--words", type=int, default=60, help="words of article per prompt (the quickstart's are ~40)")
    args = ap.parse_args()
    task = get_task(TaskConfig(type="classification", labels=LABELS,
                               instruction="Which topic is this BBC News article: business, entertainment, politics, "
                                           "sports or tech?"))
    lm = load_lm(args.student)  # bf16 on the GPU
    engine = TransformersEngine(lm, task)
    rows = [json.loads(x) for x in Path(args.data).read_text().splitlines()][: args.n]
    msgs = [[{"role": "user", "content": " ".join(r["prompt"].split()[: args.words])}] for r in rows]
    for _ in range(3):
        engine.answer(msgs[:8])
    sync()
    out: dict = {"what": __doc__.split("\n\n")[0], "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu", "dtype": str(lm.model.dtype),
                 "requests": len(msgs), "prompt_tokens_mean": None, "vllm": "not measured (see docstring)"}
    lat = []
    toks = []
    for m in msgs:
        t = time.perf_counter()
        a = engine.answer([m])[0]
        lat.append(time.perf_counter() - t)
        toks.append(a.prompt_tokens)
    out["prompt_tokens_mean"] = statistics.mean(toks)
    out["concurrency_1"] = {"p50_ms": 1e3 * pct(lat, 0.5), "p95_ms": 1e3 * pct(lat, 0.95),
                            "requests_per_s": len(lat) / sum(lat)}
    for bs in (8, 32):
        t = time.perf_counter()
        for i in range(0, len(msgs), bs):
            engine.answer(msgs[i : i + bs])
        sync()
        out[f"bare_batch_{bs}_requests_per_s"] = len(msgs) / (time.perf_counter() - t)
    for conc in (8, 32):
        batcher = Batcher(engine, 32, 2.0)
        waits: list[float] = []

        def call(m: list[dict]) -> None:
            t0 = time.perf_counter()
            batcher.submit(m).result()
            waits.append(time.perf_counter() - t0)

        t = time.perf_counter()
        with ThreadPoolExecutor(conc) as pool:
            list(pool.map(call, msgs * 2))
        wall = time.perf_counter() - t
        batcher.close()
        out[f"concurrency_{conc}"] = {"requests_per_s": 2 * len(msgs) / wall, "p50_ms": 1e3 * pct(waits, 0.5),
                                      "p95_ms": 1e3 * pct(waits, 0.95)}
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
