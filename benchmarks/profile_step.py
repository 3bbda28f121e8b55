"""Where one potstill+compile training step's time goes (SmolLM2-135M shape, B=16, T=1024, one GPU).

Times the step with collation inside (as the trainer does) and outside, collation alone, and the
CE head's chunk budget at 256 vs 512 MiB; then prints torch.profiler's top CUDA kernels and CPU
ops over three steps and the share of the step the GPU is busy.

    PYTHONPATH=src python benchmarks/profile_step.py --out profile_step.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from train_step import CE_SPEC, STUDENT, build, loss_module, potstill_loss, random_batches, timed_steps, train_step  # noqa: E402

from potstill.train import fused_head as FH  # noqa: E402
from potstill.train.batching import collate  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="profile_step.json")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=1024)
    args = ap.parse_args()
    B, T = args.batch, args.seq
    data = random_batches(STUDENT["vocab_size"], B, T)
    model = build(STUDENT, "cuda", torch.bfloat16, seed=0).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    module = loss_module(model, True, None)
    inside = train_step(model, opt, potstill_loss(module))
    pre = [collate(x, pad=0, device=torch.device("cuda")) for x in data]
    outside = train_step(model, opt, lambda m, b: module(b, CE_SPEC)["ce"] / b.ids[:, 1:].numel())
    out = {"device": torch.cuda.get_device_name(), "batch": B, "seq": T}
    out["step_ms_collate_inside"] = timed_steps(inside, data, 3, 10, "cuda")[0] * 1e3
    out["step_ms_collate_outside"] = timed_steps(outside, pre, 3, 10, "cuda")[0] * 1e3
    FH.CHUNK_BYTES = 1 << 28
    out["step_ms_collate_outside_chunk_256mib"] = timed_steps(outside, pre, 3, 10, "cuda")[0] * 1e3
    FH.CHUNK_BYTES = 1 << 29
    times = []
    for x in data * 2:
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        collate(x, pad=0, device=torch.device("cuda"))
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    out["collate_ms"] = statistics.median(times)
    print(json.dumps(out, indent=1), flush=True)
    acts = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    with torch.profiler.profile(activities=acts) as prof:
        for x in data[:3]:
            inside(x)
        torch.cuda.synchronize()
    wall = (time.perf_counter() - t0) * 1e3
    ka = prof.key_averages()
    cuda_total = sum(e.self_device_time_total for e in ka) / 1e3
    out["profiled_wall_ms_3_steps"], out["gpu_busy_ms_3_steps"] = wall, cuda_total
    out["top_cuda"] = [{"op": e.key, "self_cuda_ms": e.self_device_time_total / 1e3, "calls": e.count}
                       for e in sorted(ka, key=lambda e: -e.self_device_time_total)[:15]]
    out["top_cpu"] = [{"op": e.key, "self_cpu_ms": e.self_cpu_time_total / 1e3, "calls": e.count}
                      for e in sorted(ka, key=lambda e: -e.self_cpu_time_total)[:12]]
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(ka.table(sort_by="self_device_time_total", row_limit=15), flush=True)
    print(ka.table(sort_by="self_cpu_time_total", row_limit=12), flush=True)
    print(f"3 steps: wall {wall:.1f} ms, GPU busy {cuda_total:.1f} ms ({cuda_total / wall:.0%})")


if __name__ == "__main__":
    main()
