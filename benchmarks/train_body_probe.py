"""Probe: where a compiled training step's body could lose GPU time, part by part, on one GPU.

The training step of a SmolLM2-135M-shaped student (B=16, T=1024, bf16) is 50.5 ms in potstill
against 60.2 ms for transformers under ``torch.compile`` (``train_step.json``): 1.19x, and the
goal is 1.5x, i.e. about 10 ms less GPU work. This times, forward and backward, each at the
step's shapes and alone:

* the sibling projections as the layer runs them (q, k, v: three products of the same input;
  gate, up: two) against one product over concatenated weights, split after. The backward of
  the split product is one ``grad_input`` product and one ``grad_weight`` product instead of
  three (two) of each, and no sum of the input's gradients;
* causal grouped-query attention (9 query heads, 3 key/value heads, head dim 64) through each
  sdpa backend that takes it: cuDNN (what sdpa picks on an H200), flash, memory-efficient, with
  ``enable_gqa`` or with the key/value heads repeated first.

Times: median of ``--reps`` runs after warm-up, CUDA events, ms for all 30 layers (one layer's
time x 30). Correctness: the fused projections' outputs and gradients must equal the separate
ones' to bf16 rounding, and each attention backend's output and gradients must match cuDNN's,
or the script exits 1 (``--break`` perturbs the fused path to show that gate failing).

    PYTHONPATH=src python benchmarks/train_body_probe.py --out train_body_probe.json
    PYTHONPATH=src python benchmarks/train_body_probe.py --tiny   # CPU run of the same code
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch
import torch.nn.functional as F

LAYERS = 30
TOL = 2e-2  # relative L2 between two bf16 computations of one product: ~3e-3 seen on CPU


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().float(), b.detach().float()
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


def timeit(fn, reps: int, device: str) -> float:
    """Median ms of ``fn()`` over ``reps`` runs after 3 warm-up runs."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(reps):
        if device == "cuda":
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            fn()
            e.record()
            e.synchronize()
            times.append(s.elapsed_time(e))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def projections(x: torch.Tensor, weights: list[torch.Tensor], grads: list[torch.Tensor], fused: bool,
                scale: float = 1.0):
    """Forward and backward of sibling projections of ``x``; returns (outputs, grad x, grad weights)."""
    x = x.detach().requires_grad_(True)
    ws = [w.detach().requires_grad_(True) for w in weights]
    if fused:
        y = F.linear(x, torch.cat(ws)) * scale
        outs = list(y.split([w.shape[0] for w in ws], dim=-1))
    else:
        outs = [F.linear(x, w) for w in ws]
    torch.autograd.backward(outs, grads)
    return outs, x.grad, [w.grad for w in ws]


def attention(q, k, v, g, backend, repeat: bool):
    from torch.nn.attention import sdpa_kernel

    q, k, v = (t.detach().requires_grad_(True) for t in (q, k, v))
    kk, vv = k, v
    if repeat:
        n = q.shape[1] // k.shape[1]
        kk, vv = k.repeat_interleave(n, dim=1), v.repeat_interleave(n, dim=1)
    with sdpa_kernel([backend]):
        out = F.scaled_dot_product_attention(q, kk, vv, is_causal=True, enable_gqa=not repeat and kk.shape[1] != q.shape[1])
    out.backward(g)
    return out, q.grad, k.grad, v.grad


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiny", action="store_true", help="small shapes on the CPU (a smoke run)")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--break", dest="broken", action="store_true", help="scale the fused product (gate must fail)")
    ap.add_argument("--out")
    a = ap.parse_args()
    device = "cpu" if a.tiny else "cuda"
    B, T, H, I, Hq, Hkv, D = (2, 64, 64, 128, 4, 2, 16) if a.tiny else (16, 1024, 576, 1536, 9, 3, 64)
    torch.manual_seed(0)
    dt = torch.bfloat16
    x = torch.randn(B * T, H, device=device, dtype=dt)
    failures: list[str] = []
    result: dict = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "torch": torch.__version__,
                    "shape": dict(B=B, T=T, H=H, I=I, heads=Hq, kv_heads=Hkv, head_dim=D), "layers": LAYERS,
                    "ms_for_all_layers": {}, "errors": {}}
    groups = {"qkv": [H, Hkv * D, Hkv * D], "gate_up": [I, I]}
    for name, outs in groups.items():
        ws = [torch.randn(o, H, device=device, dtype=dt) / H**0.5 for o in outs]
        gs = [torch.randn(B * T, o, device=device, dtype=dt) for o in outs]
        ref = projections(x, ws, gs, fused=False)
        got = projections(x, ws, gs, fused=True, scale=1.05 if a.broken else 1.0)
        err = max([rel(o, r) for o, r in zip(got[0], ref[0])] + [rel(got[1], ref[1])]
                  + [rel(o, r) for o, r in zip(got[2], ref[2])])
        result["errors"][f"{name} fused"] = err
        if err > TOL:
            failures.append(f"{name}: fused projections differ from separate ones by {err:.3g} (tolerance {TOL})")
        for fused in (False, True):
            ms = timeit(lambda: projections(x, ws, gs, fused=fused), a.reps, device)
            result["ms_for_all_layers"][f"{name} {'fused' if fused else 'separate'}"] = ms * LAYERS
        print(name, {k: round(v, 2) for k, v in result["ms_for_all_layers"].items() if k.startswith(name)}, flush=True)

    from torch.nn.attention import SDPBackend

    q = torch.randn(B, Hq, T, D, device=device, dtype=dt)
    k = torch.randn(B, Hkv, T, D, device=device, dtype=dt)
    v = torch.randn(B, Hkv, T, D, device=device, dtype=dt)
    g = torch.randn(B, Hq, T, D, device=device, dtype=dt)
    backends = {"math": SDPBackend.MATH} if a.tiny else {
        "cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
        "efficient": SDPBackend.EFFICIENT_ATTENTION}
    ref = None
    for bname, backend in backends.items():
        for repeat in (False, True):
            label = f"attention {bname}{' (kv repeated)' if repeat else ' (enable_gqa)'}"
            try:
                got = attention(q, k, v, g, backend, repeat)
            except RuntimeError as e:
                result["ms_for_all_layers"][label] = None
                result["errors"][label] = f"not available: {str(e).splitlines()[0][:160]}"
                print(label, "not available", flush=True)
                continue
            if ref is None:
                ref = got
            err = max(rel(x_, r) for x_, r in zip(got, ref))
            result["errors"][label] = err
            if err > TOL:
                failures.append(f"{label}: differs from the first backend by {err:.3g}")
            ms = timeit(lambda: attention(q, k, v, g, backend, repeat), a.reps, device)
            result["ms_for_all_layers"][label] = ms * LAYERS
            print(label, round(ms * LAYERS, 2), "ms for 30 layers, err", f"{err:.2e}", flush=True)
    result["failures"] = failures
    text = json.dumps(result, indent=1)
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")
    for line in failures:
        print("FAIL:", line, file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
