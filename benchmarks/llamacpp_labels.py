"""Engine llamacpp on classification: the quickstart student's label scores through llama-server
against the transformers fp32 engine (issue 17's throughput goal: 5x fp32 padded at batch 16).

    POTSTILL_LLAMA_SERVER=... HF_HUB_OFFLINE=1 PYTHONPATH=src:. python benchmarks/llamacpp_labels.py --run RUN

RUN is a finished quickstart run. Each engine in a process of its own, as ``int8_calibration.py``
times them (``engine_int8.time_alone``): ``n_latency`` batch-1 calls, then the 250 test articles in
arrival-order batches of 16, ``--passes`` times (the median pass). Engines: transformers fp32 with
padded batches (issue 17's baseline) and packed (engine transformers' default, the faster fp32), llamacpp q8_0 alone and with the default near-tie re-check (0.3,
transformers fp32), and llamacpp f32. Label agreement with fp32 and gold accuracy come from the
first pass's logits. Exits 1 if llamacpp f32 gives fp32's label on fewer than 99% of the articles.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

from benchmarks.engine import BASE, MIN_SAME_LABEL, padded, quickstart
from benchmarks.engine_int8 import machine, print_alone, run_alone
from benchmarks.int8_calibration import quality, with_ratios
from potstill.engines import load_engine

Q8 = "llamacpp q8_0"
Q8_RECHECK = "llamacpp q8_0, fp32 re-check under 0.3 (the default)"
F32 = "llamacpp f32 (quantization: none)"
PACKED = "transformers fp32, packed (engine transformers' default)"


def factories(spec: str) -> dict[str, Callable[[], Any]]:
    return {BASE: lambda: padded(load_engine("transformers", spec, device="cpu")),
            PACKED: lambda: load_engine("transformers", spec, device="cpu"),
            Q8: lambda: load_engine("llamacpp", spec, device="cpu"),
            Q8_RECHECK: lambda: load_engine("llamacpp", spec, device="cpu", recheck_margin="auto"),
            F32: lambda: load_engine("llamacpp", spec, device="cpu", quantization="none")}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=Path(__file__).with_suffix(".json"))
    ap.add_argument("--n-latency", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--passes", type=int, default=3)
    ap.add_argument("--solo", help="(internal) time this one engine alone and print the results as JSON")
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    work = Path(tempfile.mkdtemp(prefix="potstill-bench-llama-"))
    cfg, _, test = quickstart(work, args.run)
    spec = str(args.run / "student")
    if args.solo:
        print_alone(factories(spec)[args.solo](), args.solo, cfg, test, args.n_latency, args.batch_size, args.passes)
        shutil.rmtree(work, ignore_errors=True)
        return
    from potstill.tasks import get_task

    t0 = time.perf_counter()
    rows = {}
    for k in factories(spec):
        rows[k] = run_alone(__file__, k, "--run", str(args.run), "--n-latency", str(args.n_latency),
                            "--batch-size", str(args.batch_size), "--passes", str(args.passes))
        print(f"{k}: done", file=sys.stderr, flush=True)
    key = f"throughput_batch{args.batch_size}"
    q = quality(rows, test, get_task(cfg.task).labels, key)
    out: dict[str, Any] = {"student_model": spec, "machine": machine(), "engines": with_ratios(rows, q, key)}
    for k, r in out["engines"].items():
        print(f"{k}: p50 {r['batch1']['p50_s'] * 1e3:.1f} ms, batch {args.batch_size} "
              f"{r[key]['per_input_s'] * 1e3:.2f} ms/input ({r['throughput_vs_fp32']:.2f}x), same label "
              f"{r['same_label_as_fp32']:.1%}, re-checked {r['rechecked_share']:.1%}")
    out["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    out["wall_s"] = round(time.perf_counter() - t0, 1)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    shutil.rmtree(work, ignore_errors=True)
    same = out["engines"][F32]["same_label_as_fp32"]
    if same < MIN_SAME_LABEL:
        print(f"CORRECTNESS FAILED: {F32} gave fp32's label on {same:.1%} (< {MIN_SAME_LABEL:.0%})", file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
