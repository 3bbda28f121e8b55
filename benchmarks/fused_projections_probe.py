"""Probe (issue 19): where the GPU time of potstill's compiled training step goes, kernel by kernel,
and what fusing each layer's sibling projections buys: q, k and v as one product (576 -> 960 on
SmolLM2-135M) and gate and up as one (576 -> 3,072), the weights kept as they are (concatenated in
the step, so checkpoints and optimizers see the same parameters) and the outputs split after.

The two variants take turns in one process on the same batches (SmolLM2-135M shape, B=16, T=1024,
bf16, fused AdamW, the trainer's loss module under ``torch.compile``), each measured over several
rounds of CUDA-event-timed steps. Exits 1 if the fused variant's losses leave the plain one's by
more than bf16 noise (``LOSS_RTOL``) or a gradient differs by more than ``GRAD_RTOL`` relative L2.

    PYTHONPATH=src:. python benchmarks/fused_projections_probe.py --out benchmarks/fused_projections_probe.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from train_step import STUDENT, build, flops_per_token, loss_module, potstill_loss, random_batches, timed_steps, train_step  # noqa: E402

LOSS_RTOL = 5e-3
GRAD_RTOL = 2e-2


def fuse_projections(model) -> int:
    """Each decoder layer's q/k/v and gate/up run as one product each; the layers patched."""
    n = 0
    for layer in model.model.layers:
        att, mlp = layer.self_attn, layer.mlp
        q, k, v = att.q_proj, att.k_proj, att.v_proj
        nq, nk = q.out_features, k.out_features
        box: dict[str, torch.Tensor | None] = {"kv": None}

        def q_forward(x, q=q, k=k, v=v, nq=nq, box=box):
            y = F.linear(x, torch.cat([q.weight, k.weight, v.weight]))
            box["kv"] = y[..., nq:]
            return y[..., :nq]

        def k_forward(x, nk=nk, box=box):
            return box["kv"][..., :nk]

        def v_forward(x, nk=nk, box=box):
            kv, box["kv"] = box["kv"], None
            return kv[..., nk:]

        q.forward, k.forward, v.forward = q_forward, k_forward, v_forward
        g, u, d, act = mlp.gate_proj, mlp.up_proj, mlp.down_proj, mlp.act_fn
        ni = g.out_features

        def mlp_forward(x, g=g, u=u, d=d, act=act, ni=ni):
            gu = F.linear(x, torch.cat([g.weight, u.weight]))
            return d(act(gu[..., :ni]) * gu[..., ni:])

        mlp.forward = mlp_forward
        n += 1
    return n


def kernel_breakdown(step, data) -> dict:
    """Device time of three profiled steps by kernel kind."""
    acts = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=acts) as prof:
        for x in data[:3]:
            step(x)
        torch.cuda.synchronize()
    kinds: dict[str, float] = defaultdict(float)
    names: dict[str, float] = defaultdict(float)
    for e in prof.events():
        if e.device_type != torch.autograd.DeviceType.CUDA:
            continue
        ms = e.device_time / 1e3 / 3
        n = e.name
        low = n.lower()
        if "nvjet" in low or "gemm" in low or "cutlass" in low or "sm90_xmma" in low:
            kind = "gemm"
        elif "sdpa" in low or "flash" in low or "fmha" in low or "attention" in low:
            kind = "attention"
        elif "adam" in low or "multi_tensor" in low:
            kind = "optimizer"
        elif "ce_rows" in low or "rows_kernel" in low:
            kind = "loss head rows"
        elif low.startswith("triton_") or "triton" in low:
            kind = "triton (inductor fused)"
        elif "memcpy" in low or "memset" in low or "copy" in low or "fill" in low:
            kind = "copies / fills"
        else:
            kind = "other"
        kinds[kind] += ms
        names[n] += ms
    top = sorted(names.items(), key=lambda kv: -kv[1])[:25]
    return {"ms_per_step_by_kind": dict(sorted(kinds.items(), key=lambda kv: -kv[1])),
            "device_ms_per_step": sum(kinds.values()),
            "top_kernels_ms_per_step": [{"kernel": k[:160], "ms": v} for k, v in top]}


def grads(model, module, batch) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    potstill_loss(module)(model, batch).backward()
    out = {n: p.grad.float().clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="fused_projections_probe.json")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--reps", type=int, default=10)
    args = ap.parse_args()
    B, T = args.batch, args.seq
    data = random_batches(STUDENT["vocab_size"], B, T)
    out = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "batch": B, "seq": T, "variants": {}}
    failures = []

    variants = {}
    for name in ("potstill+compile", "potstill+compile+fused projections"):
        model = build(STUDENT, "cuda", torch.bfloat16, seed=0).train()
        if "fused" in name:
            out["fused_layers"] = fuse_projections(model)
        module = loss_module(model, True, None)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
        variants[name] = (model, module, opt)

    # Gradients of the first step, before any optimizer step: both models hold the same weights.
    ref = grads(variants["potstill+compile"][0], variants["potstill+compile"][1], data[0])
    got = grads(*variants["potstill+compile+fused projections"][:2], data[0])
    worst = max(((got[n] - r).norm() / r.norm().clamp(min=1e-12)).item() for n, r in ref.items())
    out["grad_max_rel_l2"] = worst
    if worst > GRAD_RTOL:
        failures.append(f"gradient rel L2 {worst:.3g} > {GRAD_RTOL}")

    rounds: dict[str, list[float]] = {n: [] for n in variants}
    losses: dict[str, list[float]] = {n: [] for n in variants}
    t0 = time.perf_counter()
    for r in range(args.rounds):
        for name, (model, module, opt) in variants.items():
            step = train_step(model, opt, potstill_loss(module))
            med, spread, ls, peak, host = timed_steps(step, data, 3 if r == 0 else 1, args.reps, "cuda")
            rounds[name].append(med * 1e3)
            losses[name] += ls
            out["variants"].setdefault(name, {})["peak_gib"] = peak
            print(name, f"round {r}: {med * 1e3:.2f} ms (host {host * 1e3:.1f})", flush=True)
    out["wall_s"] = time.perf_counter() - t0
    fpt = flops_per_token(STUDENT, T)
    for name in variants:
        ms = statistics.median(rounds[name])
        out["variants"][name].update(step_ms_rounds=rounds[name], step_ms=ms, tokens_per_s=B * T / ms * 1e3,
                                     mfu_datasheet=fpt * B * T / (ms / 1e3) / 989e12)
    a, b = losses["potstill+compile"], losses["potstill+compile+fused projections"]
    rel = max(abs(x - y) / abs(x) for x, y in zip(a, b))
    out["loss_max_rel_diff"] = rel
    if rel > LOSS_RTOL:
        failures.append(f"loss rel diff {rel:.3g} > {LOSS_RTOL}")
    out["fused_speedup"] = (out["variants"]["potstill+compile"]["step_ms"]
                            / out["variants"]["potstill+compile+fused projections"]["step_ms"])
    for name, (model, module, opt) in variants.items():
        out["variants"][name]["kernels"] = kernel_breakdown(train_step(model, opt, potstill_loss(module)), data)
    out["failures"] = failures
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(json.dumps({k: v for k, v in out.items() if k != "variants"}, indent=1))
    for name, row in out["variants"].items():
        print(name, row["step_ms"], json.dumps(row["kernels"]["ms_per_step_by_kind"]))
    if failures:
        print("FAILED:", "; ".join(failures))
        sys.exit(1)


if __name__ == "__main__":
    main()
