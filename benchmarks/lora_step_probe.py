"""Probe: where a compiled LoRA training step spends its time on the GPU host. For potstill's
loss module with ``train.compile`` over full fine-tuning and over LoRA (the same student shape as
``train_adapters.py``): the step's wall and host milliseconds, dynamo's graphs and graph breaks
(with their reasons), and from one profiled step the kernels launched, their GPU time, the
kernels that took the most of it, and the CPU ops that took the most host time. A LoRA variant
whose mean loss parts from plain LoRA's by more than ``train_step.CURVE_RTOL`` exits 1.

    PYTHONPATH=src:. python benchmarks/lora_step_probe.py --out lora_step_probe.json
    PYTHONPATH=src:. python benchmarks/lora_step_probe.py --tiny   # CPU smoke run
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import sys

import torch

from benchmarks.train_adapters import adapted, variant
from benchmarks.train_step import CURVE_RTOL, STUDENT, TINY, build, random_batches, timed_steps, train_step


def probe(name: str, shape: dict, device: str, args) -> dict:
    """``name``: ``lora`` or ``full``, then ``:MODE`` for a torch.compile mode (reduce-overhead:
    CUDA graphs) or ``:cpp-wrapper`` (inductor's C++ wrapper launching the kernels)."""
    from torch._dynamo.utils import counters
    from torch._inductor import config as inductor

    torch._dynamo.reset()
    counters.clear()
    what, _, how = name.partition(":")
    data = random_batches(shape["vocab_size"], args.batch, args.seq)
    if what == "full":
        model = build(shape, device, torch.bfloat16 if device == "cuda" else torch.float32, seed=0).train()
        base = model
    else:
        model, base = adapted("lora", shape, device, None)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, fused=device == "cuda")
    loss_fn, _ = variant("potstill+compile", model, base, 1.0, None if how in ("", "cpp-wrapper") else how)
    step = train_step(model, opt, loss_fn)
    inductor.cpp_wrapper = how == "cpp-wrapper"
    try:
        med, _, losses, _, host = timed_steps(step, data, args.warmup, args.reps, device)
    finally:
        inductor.cpp_wrapper = False
    breaks = collections.Counter()
    for reason, n in counters["graph_break"].items():
        breaks[str(reason)[:200]] += n
    row = {"variant": name, "step_ms": med * 1e3, "host_ms": host * 1e3, "losses": losses,
           "trainable": sum(p.numel() for p in params),
           "unique_graphs": int(counters["stats"]["unique_graphs"]), "graph_breaks": dict(breaks.most_common(10))}
    acts = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if device == "cuda" else [])
    with torch.profiler.profile(activities=acts) as prof:
        step(data[0])
        if device == "cuda":
            torch.cuda.synchronize()
    events = prof.key_averages()
    kernels = [e for e in events if getattr(e, "device_type", None) == torch.autograd.DeviceType.CUDA]
    row["kernels"] = sum(e.count for e in kernels)
    row["kernel_ms"] = sum(e.self_device_time_total for e in kernels) / 1e3 if kernels else None
    row["top_kernels"] = [{"kernel": e.key[:100], "count": e.count, "ms": e.self_device_time_total / 1e3}
                          for e in sorted(kernels, key=lambda e: e.self_device_time_total, reverse=True)[:20]]
    cpu = sorted((e for e in events if e.device_type == torch.autograd.DeviceType.CPU),
                 key=lambda e: e.self_cpu_time_total, reverse=True)[:15]
    row["top_cpu_ops"] = [{"op": e.key[:80], "count": e.count, "self_cpu_ms": e.self_cpu_time_total / 1e3}
                          for e in cpu]
    print(json.dumps({k: v for k, v in row.items() if k != "top_cpu_ops"}), flush=True)
    for e in row["top_cpu_ops"]:
        print("   ", e, flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="lora_step_probe.json")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--variants", default="lora,lora:reduce-overhead,lora:cpp-wrapper,full")
    args = ap.parse_args()
    device = "cpu" if args.tiny or not torch.cuda.is_available() else "cuda"
    shape = TINY if args.tiny else STUDENT
    if args.tiny:
        args.batch, args.seq, args.warmup, args.reps = 2, 64, 1, 2
    out = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "torch": torch.__version__,
           "argv": sys.argv[1:], "rows": []}
    for name in args.variants.split(","):
        out["rows"].append(probe(name, shape, device, args))
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1)
    # Another compile mode or launcher runs the same step: its losses must be plain LoRA's.
    ref = next((r for r in out["rows"] if r["variant"] == "lora"), None)
    failed = [f"{r['variant']}: mean loss {statistics.fmean(r['losses']):.5f} vs lora's "
              f"{statistics.fmean(ref['losses']):.5f}" for r in out["rows"] if ref is not None
              and r["variant"].startswith("lora:") and not abs(statistics.fmean(r["losses"]) / statistics.fmean(
                  ref["losses"]) - 1) <= CURVE_RTOL]
    if failed:
        print(f"LOSS MATCH FAILED (tolerance {CURVE_RTOL:.0e} relative):\n  " + "\n  ".join(failed), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
