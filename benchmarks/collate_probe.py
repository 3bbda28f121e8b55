"""Probe (issue 19): what collate's host work and its copies cost potstill's compiled training step.

collate used to convert each example's ids with ``torch.tensor(list)`` and send five tensors to
the GPU with pageable copies, each of which waits for the stream to drain; it now converts through
numpy and sends one pinned buffer without waiting. This runs the trainer's compiled step (SmolLM2-135M
shape, B=16, T=1024, bf16, fused AdamW) with the earlier collate (``pageable_collate`` below, the
same tensors) and with today's, taking turns for several rounds in one process, and transformers
under ``torch.compile`` beside them, each timed with CUDA events; and collate alone on the host.
Exits 1 if the two collates' batches differ or the two steps' losses differ.

    PYTHONPATH=src:. python benchmarks/collate_probe.py --out benchmarks/collate_probe.json
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
import train_step as TS  # noqa: E402

from potstill.train import batching  # noqa: E402
from potstill.train.batching import IGNORE, Batch, collate  # noqa: E402


def pageable_collate(batch, pad, device, **_):
    """collate before 2026-12-02, for unpacked SFT examples: the same tensors, built with
    ``torch.tensor(list)`` per example and copied with five pageable ``.to(device)``."""
    B, T = len(batch), max(len(e.ids) for e in batch)
    ids = torch.full((B, T), pad, dtype=torch.long)
    mask = torch.zeros((B, T), dtype=torch.long)
    pos = torch.zeros((B, T), dtype=torch.long)
    ce = torch.full((B, T), IGNORE, dtype=torch.long)
    kd = torch.full((B, T), IGNORE, dtype=torch.long)
    for b, e in enumerate(batch):
        n = len(e.ids)
        row = torch.tensor(e.ids)
        ids[b, :n] = row
        mask[b, :n] = 1
        pos[b, :n] = torch.arange(n)
        ce[b, e.n_prompt : n] = row[e.n_prompt :]
    n_targets = {"ce": int((ce[:, 1:] != IGNORE).sum()), "kd": 0, "topk": 0, "labels": 0}
    return Batch(ids=ids.to(device), attention_mask=mask.to(device), position_ids=pos.to(device),
                 ce_targets=ce[:, 1:].to(device), kd_targets=kd[:, 1:].to(device), topk_mask=None, topk_ids=None,
                 topk_lp=None, n_targets=n_targets)


def host_ms(fn, data, reps=20) -> float:
    times = []
    for i in range(reps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn(data[i % len(data)], 0, torch.device("cuda"))
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="collate_probe.json")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--reps", type=int, default=10)
    args = ap.parse_args()
    B, T = args.batch, args.seq
    data = TS.random_batches(TS.STUDENT["vocab_size"], B, T)
    out = {"device": torch.cuda.get_device_name(), "host": TS.host_cpu(), "torch": torch.__version__,
           "batch": B, "seq": T}
    failures = []
    a, b = pageable_collate(data[0], 0, torch.device("cuda")), collate(data[0], 0, torch.device("cuda"))
    for f in ("ids", "attention_mask", "position_ids", "ce_targets", "kd_targets"):
        if not torch.equal(getattr(a, f), getattr(b, f)):
            failures.append(f"collates differ in {f}")
    out["collate_host_ms"] = {"pageable (before)": host_ms(pageable_collate, data), "pinned (now)": host_ms(collate, data)}
    print(out, flush=True)

    models = {}
    for name in ("potstill+compile, collate before", "potstill+compile, collate now", "hf+compile"):
        model = TS.build(TS.STUDENT, "cuda", torch.bfloat16, seed=0).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
        if name.startswith("hf"):  # as train_step.py's hf+compile: the whole model compiled
            compiled = torch.compile(model)
            loss = (lambda m, ex, c=compiled: TS.hf_loss(c, ex))
        else:
            loss = TS.potstill_loss(TS.loss_module(model, True, None))
        models[name] = TS.train_step(model, opt, loss)
    rounds = {n: [] for n in models}
    hosts = {n: [] for n in models}
    losses = {n: [] for n in models}
    for r in range(args.rounds):
        for name, step in models.items():
            TS.collate = pageable_collate if name.endswith("before") else collate  # potstill_loss's collate
            med, _, ls, peak, host = TS.timed_steps(step, data, 3 if r == 0 else 1, args.reps, "cuda")
            rounds[name].append(med * 1e3)
            hosts[name].append(host * 1e3)
            losses[name] += ls
            print(name, f"round {r}: {med * 1e3:.2f} ms (host {host * 1e3:.1f})", flush=True)
    TS.collate = batching.collate
    out["variants"] = {n: {"step_ms_rounds": rounds[n], "step_ms": statistics.median(rounds[n]),
                           "host_ms": statistics.median(hosts[n]),
                           "tokens_per_s": B * T / statistics.median(rounds[n]) * 1e3} for n in models}
    x, y = losses["potstill+compile, collate before"], losses["potstill+compile, collate now"]
    rel = max(abs(p - q) / abs(p) for p, q in zip(x, y))
    out["loss_max_rel_diff_before_vs_now"] = rel
    if rel > 1e-3:
        failures.append(f"losses differ by {rel:.3g}")
    v = out["variants"]
    out["now_vs_before"] = v["potstill+compile, collate before"]["step_ms"] / v["potstill+compile, collate now"]["step_ms"]
    out["now_vs_hf_compile"] = v["hf+compile"]["step_ms"] / v["potstill+compile, collate now"]["step_ms"]
    out["before_vs_hf_compile"] = v["hf+compile"]["step_ms"] / v["potstill+compile, collate before"]["step_ms"]
    out["failures"] = failures
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))
    if failures:
        print("FAILED:", "; ".join(failures))
        sys.exit(1)


if __name__ == "__main__":
    main()
