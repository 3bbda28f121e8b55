"""A generating student served on one GPU: the dynamic KV cache (the engine as loaded) against
``serve.compile``'s path, which on CUDA decodes on static KV caches with CUDA graphs.

    PYTHONPATH=src:. python benchmarks/serve_gpu_generation.py --model /tmp/m/smol.gguf \
        --texts texts.jsonl --out serve_gpu_generation.json   # texts.jsonl: gpu_generation.bbc_texts(96)
    PYTHONPATH=src:. python benchmarks/serve_gpu_generation.py --tiny   # CPU smoke run of the same code
    PYTHONPATH=src:. python benchmarks/serve_gpu_generation.py --tiny --break-static   # the gate failing

Both run as ``potstill serve`` runs a free-text student: ``ServedStudent`` (greedy generation to
the task's ``max_output_tokens``, plus the input embedding routing needs) behind the ``Batcher``
that gathers concurrent requests, warmed as the server warms it (``ServedStudent.warm``: every
row bucket for static caches). The task: "summarise the news article in one sentence", 64 tokens
at most, a chat prompt whose system turn the engine caches. Measured per variant, taking turns:
latency at concurrency 1 (p50 / p95 over ``--n1`` requests) and requests per second with
``--callers`` concurrent callers (``--nc`` requests, gathered into batches of up to ``--batch``).

Correctness (exit 1 past it, after writing the JSON): the concurrency-1 answers of ``static``
against ``dynamic``'s, by ``gpu_generation.divergence_gaps``: where an output parts from the
dynamic one, the dynamic model's own token may lead by at most ``MAX_GAP`` nats (bf16 near ties).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from benchmarks.gpu_generation import (INSTRUCTION, MAX_GAP, add_common_args, divergence_gaps, load_texts, prepare,
                                       with_static)
from benchmarks.serve_gpu import pct, sync


def served_student(spec: str, device: str, compile: bool, max_new: int) -> Any:
    from potstill.config import load_config
    from potstill.engines import load_engine
    from potstill.serve.engine import ServedStudent
    from potstill.tasks import get_task

    task = get_task(load_config(overrides={"task": {"type": "freetext", "instruction": INSTRUCTION,
                                                    "max_output_tokens": max_new}}).task)
    return ServedStudent(load_engine("transformers", spec, device=device, compile=compile), task)


def at_concurrency_1(batcher: Any, msgs: list) -> tuple[list[float], list]:
    secs, answers = [], []
    for m in msgs:
        t0 = time.perf_counter()
        answers.append(batcher.submit(m).result())
        secs.append(time.perf_counter() - t0)
    return secs, answers


def concurrent(batcher: Any, msgs: list, callers: int) -> float:
    """Requests per second with ``callers`` threads each sending one request at a time."""
    sync()
    t0 = time.perf_counter()
    with ThreadPoolExecutor(callers) as pool:
        list(pool.map(lambda m: batcher.submit(m).result(), msgs))
    sync()
    return len(msgs) / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    from potstill.models.prompting import PromptFormat
    from potstill.serve.engine import Batcher

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(ap)
    ap.add_argument("--n1", type=int, default=16, help="requests at concurrency 1")
    ap.add_argument("--nc", type=int, default=64, help="requests from the concurrent callers")
    ap.add_argument("--callers", type=int, default=16)
    ap.add_argument("--batch", type=int, default=16, help="serve.batch_size")
    ap.add_argument("--rounds", type=int, default=2, help="turns of each measurement")
    a = ap.parse_args(argv)

    device = prepare(a)
    if a.tiny:
        a.n1, a.nc, a.callers, a.batch, a.max_new, a.rounds = 4, 8, 4, 4, 16, 1
    msgs = [[{"role": "user", "content": t}] for t in load_texts(a.tiny, a.texts)]
    variants = {"dynamic": served_student(a.model, device, False, a.max_new),
                "static": served_student(a.model, device, True, a.max_new)}
    with_static(variants["static"].engine)
    result: dict[str, Any] = {
        "device": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "model": a.model, "argv": sys.argv[1:] if argv is None else argv,
        "max_output_tokens": a.max_new, "batch_size": a.batch, "callers": a.callers, "runs": {},
    }
    warm_msgs = msgs[-a.batch:]  # not among the timed requests
    batchers = {}
    for k, served in variants.items():
        t0 = time.perf_counter()
        served.warm(warm_msgs, a.batch)
        sync()
        result["runs"][k] = {"warm_s": round(time.perf_counter() - t0, 1), "latency_s": [], "requests_per_s": []}
        print(f"warm {k}: {result['runs'][k]['warm_s']} s", flush=True)
        batchers[k] = Batcher(served, a.batch, 2.0)
    answers: dict[str, list] = {}
    try:
        for _ in range(a.rounds):
            for k, b in batchers.items():
                secs, answers[k] = at_concurrency_1(b, msgs[: a.n1])
                result["runs"][k]["latency_s"] += secs
            for k, b in batchers.items():
                result["runs"][k]["requests_per_s"].append(concurrent(b, msgs[: a.nc], a.callers))
    finally:
        for b in batchers.values():
            b.close()
    for k, row in result["runs"].items():
        lat = row["latency_s"]
        row.update(p50_ms=1000 * statistics.median(lat), p95_ms=1000 * pct(lat, 0.95),
                   requests_per_s_median=statistics.median(row["requests_per_s"]),
                   output_tokens_mean=statistics.mean(x.output_tokens for x in answers[k]))
        print(f"  {k:8s} concurrency 1: p50 {row['p50_ms']:.1f} ms, p95 {row['p95_ms']:.1f} ms; "
              f"{a.callers} callers: {row['requests_per_s_median']:.1f} requests/s", flush=True)
    d, s = result["runs"]["dynamic"], result["runs"]["static"]
    result["static_vs_dynamic"] = {"p50": d["p50_ms"] / s["p50_ms"],
                                   "requests_per_s": s["requests_per_s_median"] / d["requests_per_s_median"]}
    ref = [(x.output, x.tokens) for x in answers["dynamic"]]
    got = [(x.output, x.tokens) for x in answers["static"]]
    plain = variants["dynamic"].engine
    fmt: PromptFormat = variants["dynamic"].fmt
    parts = divergence_gaps(plain, fmt, msgs[: a.n1], ref, got)
    gaps = [p["gap"] for p in parts]
    result["identical"] = sum(x[0] == y[0] for x, y in zip(ref, got)) / len(ref)
    result["departures"] = parts
    result["failures"] = [f"static parts from dynamic where dynamic's own token led by {max(gaps):.2f} nats "
                          f"(> {MAX_GAP})"] if gaps and max(gaps) > MAX_GAP else []
    print(f"static vs dynamic: p50 {result['static_vs_dynamic']['p50']:.2f}x, requests/s "
          f"{result['static_vs_dynamic']['requests_per_s']:.2f}x; identical {result['identical']:.0%}, "
          f"largest gap where it parts {max(gaps or [0.0]):.3f}", flush=True)
    if a.out:
        Path(a.out).write_text(json.dumps(result, indent=1) + "\n")
    for f in result["failures"]:
        print("FAIL:", f, file=sys.stderr)
    return 1 if result["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
