"""Student serving on one GPU: potstill's serve engine (``TransformersEngine`` behind ``Batcher``).

The quickstart's task (BBC News topic, 5 labels) on a SmolLM2-135M-shaped student (random
weights: speed does not depend on them; ``multi_gpu.py prepare`` writes one with the real
tokenizer). One request = one article prompt (real text); each answer is the label, its margin
and the embedding the router needs. Measured:
- latency at concurrency 1 (p50/p95 over ``--n`` requests, each a forward pass of batch 1);
- throughput with 8 and 32 concurrent callers, whose requests the Batcher gathers into batches;
- the bare forward (``engine.answer`` on a batch, no queue) as the floor.
vLLM is not measured: its wheel (with its own torch) does not fit the device's carry limit.

    python benchmarks/serve_gpu.py --student /tmp/mg/student --data DATA.jsonl --out serve_gpu.json [--compile]

On the device image (no pydantic or jsonschema; potstill not installed) the 2026-11-30 runs
installed into ``/tmp/site`` wheels carried in ``.whl``: pydantic, pydantic-core, annotated-types,
typing-inspection, jsonschema, jsonschema-specifications, referencing, rpds-py (cp312) and
potstill's own (``pip wheel --no-deps .``, for its entry points), with ``PYTHONPATH=src:/tmp/site``;
the student was written there by ``multi_gpu.py prepare`` (a ``multi_gpu.STUDENT``-shaped
``LlamaForCausalLM`` with the SmolLM2 tokenizer), the data ``multi_gpu.py data``'s articles.

``--compile`` adds ``serve.compile``'s path beside it (a second copy of the student, its decoder
under ``torch.compile``, warmed as the server warms it) and exits 1 if its label probabilities
differ from eager's by more than ``PROB_TOL``.

Batches run packed (``potstill.models.packing``, the default). ``packing`` in the JSON times each
engine's bare batches of 8 and 32 packed and padded (``engine.pack = False``), taking turns over
three passes, and compares their label probabilities; past ``PROB_TOL`` the script exits 1.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

LABELS = ["business", "entertainment", "politics", "sports", "tech"]
PROB_TOL = 0.02  # max |p_compiled - p_eager| over every label of every request (bf16 body, fp32 label rows)


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def measure(engine, msgs: list[list[list[dict]]]) -> dict:
    """Latency at concurrency 1, bare batched forwards, and the Batcher under 8 and 32 callers."""
    from potstill.serve.engine import Batcher

    for _ in range(3):
        engine.answer(msgs[:8])
    sync()
    out: dict = {}
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
    return out


def packing(served, msgs: list[list[list[dict]]]) -> dict:
    """Bare batches of 8 and 32, packed against padded, passes alternating; their label probabilities."""
    eng = served.engine
    out: dict = {}
    probs = {}
    for pack in (True, False):  # warm (a compiled engine compiles the padded graph here) and compare
        eng.pack = pack
        probs[pack] = eng.score_labels(served.fmt, msgs, served.label_ids, batch_size=32).logits.float().softmax(-1)
    for bs in (8, 32):
        secs: dict[bool, list[float]] = {True: [], False: []}
        for _ in range(3):
            for pack in (True, False):
                eng.pack = pack
                sync()
                t = time.perf_counter()
                for i in range(0, len(msgs), bs):
                    served.answer(msgs[i : i + bs])
                sync()
                secs[pack].append(time.perf_counter() - t)
        out[f"batch_{bs}"] = {k: {"requests_per_s_best": len(msgs) / min(v), "requests_per_s_median": len(msgs) / statistics.median(v)}
                              for k, v in (("packed", secs[True]), ("padded", secs[False]))}
        out[f"batch_{bs}"]["packed_vs_padded_median"] = statistics.median(secs[False]) / statistics.median(secs[True])
    eng.pack = True
    out["max_label_probability_diff_packed_vs_padded"] = (probs[True] - probs[False]).abs().max().item()
    out["same_label"] = (probs[True].argmax(-1) == probs[False].argmax(-1)).float().mean().item()
    return out


def main() -> None:
    from potstill.config import TaskConfig
    from potstill.models.loading import load_lm
    from potstill.serve.engine import TransformersEngine
    from potstill.tasks import get_task

    ap = argparse.ArgumentParser()
    ap.add_argument("--student", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--words", type=int, default=60, help="words of article per prompt (the quickstart's are ~40)")
    ap.add_argument("--compile", action="store_true", help="also serve.compile's path: the decoder under torch.compile")
    args = ap.parse_args()
    task = get_task(TaskConfig(type="classification", labels=LABELS,
                               instruction="Which topic is this BBC News article: business, entertainment, politics, "
                                           "sports or tech?"))
    rows = [json.loads(x) for x in Path(args.data).read_text().splitlines()][: args.n]
    msgs = [[{"role": "user", "content": " ".join(r["prompt"].split()[: args.words])}] for r in rows]
    lm = load_lm(args.student)  # bf16 on the GPU
    out: dict = {"what": __doc__.split("\n\n")[0], "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
                 "dtype": str(lm.model.dtype), "requests": len(msgs), "vllm": "not measured (see docstring)"}
    eager = TransformersEngine(lm, task)
    out.update(measure(eager, msgs))
    out["packing"] = packing(eager, msgs)
    diffs = {"eager": out["packing"]["max_label_probability_diff_packed_vs_padded"]}
    Path(args.out).write_text(json.dumps(out, indent=1))  # kept if the compiled part does not finish
    if args.compile:  # serve.compile: the same student's decoder under torch.compile, warmed as serve warms it
        engine = TransformersEngine(load_lm(args.student), task)
        engine.engine.compile()
        t = time.perf_counter()
        engine.warm(msgs[:32], 32)
        sync()
        out["compiled"] = {"compile_and_warm_s": time.perf_counter() - t, **measure(engine, msgs)}
        # Same numbers as eager: the label probabilities of every request (random weights, so labels
        # nearly tie and are reported, not gated).
        probs = [e.engine.score_labels(e.fmt, msgs, e.label_ids, batch_size=32).logits.float().softmax(-1)
                 for e in (eager, engine)]
        diff = (probs[0] - probs[1]).abs().max().item()
        out["compiled"]["max_label_probability_diff_vs_eager"] = diff
        out["compiled"]["same_label_as_eager"] = (probs[0].argmax(-1) == probs[1].argmax(-1)).float().mean().item()
        out["compiled"]["packing"] = packing(engine, msgs)
        diffs["compiled vs eager"] = diff
        diffs["compiled"] = out["compiled"]["packing"]["max_label_probability_diff_packed_vs_padded"]
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))
    failed = {k: v for k, v in diffs.items() if v > PROB_TOL}
    for k, v in failed.items():
        what = "compiled vs eager" if k == "compiled vs eager" else f"{k}: packed vs padded"
        print(f"CORRECTNESS FAILED: {what} label probabilities differ by {v:.4f} (tolerance {PROB_TOL})", file=sys.stderr)
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
