"""A LoRA student exported unmerged (``gguf-lora``) against the same student merged (``gguf``), through llama-server.

    POTSTILL_LLAMA_SERVER=... HF_HUB_OFFLINE=1 PYTHONPATH=src:. python benchmarks/lora_export.py --run RUN

RUN is a quickstart run trained with ``train.method: lora``. Both exports are written for each of
``--types`` (f16, q8_0, q4_k_m), timed, and sized; then the 250 test articles go through
llama-server, each file in a process of its own (``engine_int8.time_alone``: batch-1 calls, then
batches of 16): the merged ``student-<type>.gguf``, and ``base-<type>.gguf`` with
``--lora adapter-f16.gguf``; beside them transformers fp32 on the merged student (the reference).
Per file: same label as fp32, gold accuracy, mean total variation of the label probabilities from
fp32's, p50 at batch 1 and per-input time in batches.

Exits 1 where, at f16, the adapter on its base and the merged file disagree (labels differing on
more than 1% of the articles, or a mean total variation between their label probabilities above
0.01), or where a quantized base with the adapter sits further from fp32 than 1.5x the merged
file of the same type, plus 0.01 (the two round different weights: the base alone, or base and
delta together). ``--break-adapter`` applies the adapter at 0.5 of its scale
(``--lora-scaled``) to show the gates failing.
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
from typing import Any

import torch

from benchmarks.checks import finish
from benchmarks.engine import BASE, padded, quickstart
from benchmarks.engine_int8 import machine, mean_tv, print_alone, run_alone
from benchmarks.int8_calibration import quality, with_ratios
from potstill.engines import load_engine

F16_FLIPS = 0.01
F16_TV = 0.01
QUANT_TV_RATIO, QUANT_TV_SLACK = 1.5, 0.01


def exports(run: Path, work: Path, types: list[str]) -> dict[str, Any]:
    """Both exports of RUN's student under ``work``; their seconds and sizes."""
    from potstill.config import load_config
    from potstill.export import export

    cfg = load_config(run / "potstill.yaml")
    cfg = cfg.model_copy(update={"run_dir": str(run), "export": cfg.export.model_copy(update={"gguf_types": types})})
    out = {}
    for fmt in ("gguf", "gguf-lora"):
        t0 = time.perf_counter()
        export(cfg, fmt, work / fmt)
        out[fmt] = {"seconds": round(time.perf_counter() - t0, 1),
                    "files": {p.name: p.stat().st_size for p in sorted((work / fmt).glob("*.gguf"))}}
    return out


def engine_names(types: list[str]) -> list[str]:
    return [BASE, *(f"llamacpp {t} {kind}" for t in types for kind in ("merged", "base + adapter"))]


def make_engine(name: str, spec: str, work: Path, broken: bool) -> Any:
    from potstill.engines.convert import gguf_model
    from potstill.engines.llamacpp import ARGS_ENV, LlamaCppEngine

    if name == BASE:
        return padded(load_engine("transformers", spec, device="cpu"))
    _, qtype, kind = name.split(" ", 2)
    _, model_dir, key = gguf_model(spec, "f32")  # the merged student's tokenizer, label table and info
    if kind == "merged":
        return LlamaCppEngine(work / "gguf" / f"student-{qtype}.gguf", model_dir, f"student@{key[:12]}#{qtype}")
    adapter = work / "gguf-lora" / "adapter-f16.gguf"
    os.environ[ARGS_ENV] = f"--lora-scaled {adapter}:0.5" if broken else f"--lora {adapter}"
    return LlamaCppEngine(work / "gguf-lora" / f"base-{qtype}.gguf", model_dir, f"student@{key[:12]}#{qtype}+lora")


def gates(rows: dict[str, Any], types: list[str], n: int) -> list[str]:
    failed = []

    def probs(k: str) -> torch.Tensor:
        return torch.softmax(torch.tensor(rows[k]["logits"]), -1)

    for t in types:
        merged, adapter = f"llamacpp {t} merged", f"llamacpp {t} base + adapter"
        if t == "f16":
            a, b = probs(adapter), probs(merged)
            flips = int((a.argmax(-1) != b.argmax(-1)).sum())
            tv = float(0.5 * (a - b).abs().sum(-1).mean())
            if flips > F16_FLIPS * n or tv > F16_TV:
                failed.append(f"f16: base + adapter vs merged: {flips} labels differ, mean TV {tv:.4f} "
                              f"(limits {F16_FLIPS:.0%}, {F16_TV})")
        else:
            ref = probs(BASE)
            tv_a = float(0.5 * (probs(adapter) - ref).abs().sum(-1).mean())
            tv_m = float(0.5 * (probs(merged) - ref).abs().sum(-1).mean())
            if tv_a > QUANT_TV_RATIO * tv_m + QUANT_TV_SLACK:
                failed.append(f"{t}: base + adapter mean TV from fp32 {tv_a:.4f} > {QUANT_TV_RATIO} x merged's "
                              f"{tv_m:.4f} + {QUANT_TV_SLACK}")
    return failed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--types", default="f16,q8_0,q4_k_m")
    ap.add_argument("--out", type=Path, default=Path(__file__).with_suffix(".json"))
    ap.add_argument("--n-latency", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--passes", type=int, default=3)
    ap.add_argument("--break-adapter", action="store_true")
    ap.add_argument("--work", type=Path, help="(internal) where the exports are")
    ap.add_argument("--solo", help="(internal) time this one engine alone and print the results as JSON")
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    types = args.types.split(",")
    spec = str(args.run / "student")
    if args.solo:
        work = Path(tempfile.mkdtemp(prefix="potstill-bench-lora-solo-"))
        try:
            cfg, _, test = quickstart(work, args.run)
            print_alone(make_engine(args.solo, spec, args.work, args.break_adapter), args.solo, cfg, test,
                        args.n_latency, args.batch_size, args.passes)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return
    if not (args.run / "student" / "adapter_config.json").is_file():
        sys.exit(f"{args.run}/student is not a LoRA adapter: train the run with train.method lora")
    work = Path(tempfile.mkdtemp(prefix="potstill-bench-lora-"))
    try:
        t0 = time.perf_counter()
        out: dict[str, Any] = {"run": str(args.run), "machine": machine(), "load_average_start": os.getloadavg(),
                               "adapter": json.loads((args.run / "student" / "adapter_config.json").read_text()),
                               "exports": exports(args.run, work, types), "broken_adapter": args.break_adapter}
        out["adapter"] = {k: out["adapter"].get(k) for k in ("r", "lora_alpha", "target_modules")}
        from potstill.tasks import get_task

        cfg, _, test = quickstart(work, args.run)
        rows = {}
        for k in engine_names(types):
            rows[k] = run_alone(__file__, k, "--run", str(args.run), "--work", str(work), "--types", args.types,
                                "--n-latency", str(args.n_latency), "--batch-size", str(args.batch_size),
                                "--passes", str(args.passes), *(["--break-adapter"] if args.break_adapter else []))
            print(f"{k}: done", file=sys.stderr, flush=True)
        key = f"throughput_batch{args.batch_size}"
        q = quality(rows, test, get_task(cfg.task).labels, key)
        for k, r in rows.items():
            q[k]["mean_total_variation_vs_fp32"] = mean_tv(r["logits"], rows[BASE]["logits"])
        failed = gates(rows, types, len(test))
        out["engines"] = with_ratios(rows, q, key)
        for k, r in out["engines"].items():
            print(f"{k}: p50 {r['batch1']['p50_s'] * 1e3:.1f} ms, batch {args.batch_size} "
                  f"{r[key]['per_input_s'] * 1e3:.2f} ms/input, same label {r['same_label_as_fp32']:.1%}, "
                  f"gold {r['gold_accuracy']:.1%}, mean TV {r['mean_total_variation_vs_fp32']:.4f}")
        out["load_average_end"] = os.getloadavg()
        out["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        out["wall_s"] = round(time.perf_counter() - t0, 1)
        finish(out, failed, args.out)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
