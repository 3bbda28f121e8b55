"""Where a greedy decoding step's time goes on a GPU: the kernels one step launches and their GPU
time, against its wall time, for the eager step, the compiled step (inductor, no CUDA graphs), the
compiled step in mode ``reduce-overhead`` (a CUDA graph per step, the greedy loop's way before
``static_decode.Steps``), ``Steps`` (8 steps per CUDA graph replay), and ``Steps`` again with each
layer's sibling projections fused (q, k, v as one product, gate and up as another: fewer, larger
GEMMs, ``models.fused_linear``). A probe: timings and kernel lists; its one gate, the fused model's
logits against the unfused (``fused_projections``), exits 1 past ``FUSED_TOL``.

    PYTHONPATH=src:. python benchmarks/step_profile_probe.py --out step_profile_probe.json
    PYTHONPATH=src:. python benchmarks/step_profile_probe.py --tiny     # CPU smoke run
    PYTHONPATH=src:. python benchmarks/step_profile_probe.py --tiny --break-fused   # the gate failing

A SmolLM2-135M-shaped Llama with random bf16 weights (``--tiny``: the tests' tiny Llama, fp32, CPU)
at batch ``--rows``; its cache holds a ``--prompt``-token prompt before the steps run.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.checks import finish

# The fused model's last-position logits against the unfused model's, by dtype (exit 1 past it):
# measured 0.0 on an H200 in bf16, where 0.25 is two bf16 steps at the logits' scale (|logit| < 32);
# fp32 (``--tiny``) only reorders sums.
FUSED_TOL = {torch.bfloat16: 0.25, torch.float32: 1e-4}


def kernels(prof) -> tuple[float, int, list[tuple[str, int, float]]]:
    """GPU kernel time (ms) and launches in ``prof``, and the top kernels by time."""
    rows = {}
    for e in prof.events():
        if e.device_type != torch.autograd.DeviceType.CUDA:
            continue
        t = getattr(e, "device_time", None)
        if t is None:
            t = e.cuda_time
        n, s = rows.get(e.name, (0, 0.0))
        rows[e.name] = (n + 1, s + t / 1000)
    top = sorted(((k, n, s) for k, (n, s) in rows.items()), key=lambda r: -r[2])
    return sum(s for _, _, s in top), sum(n for _, n, _ in top), top[:15]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1)
    ap.add_argument("--prompt", type=int, default=170)
    ap.add_argument("--steps", type=int, default=16, help="steps profiled (a multiple of 8)")
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--break-fused", action="store_true", help="fused value projections give the keys (the gate fails)")
    ap.add_argument("--out")
    a = ap.parse_args(argv)
    if a.break_fused:
        from benchmarks.fused_decode import break_fused

        break_fused()
    from transformers import AutoModelForCausalLM

    from potstill.models.fused_linear import fuse_projections
    from potstill.models.static_decode import StaticCaches, Steps, mark_dynamic

    work = Path(tempfile.mkdtemp())
    cuda = not a.tiny
    if a.tiny:
        from benchmarks.gpu_generation import tiny_model

        path, dev, dtype = tiny_model(work / "tiny"), "cpu", torch.float32
    else:
        from benchmarks.serve_split_probe import smol_shaped

        path, dev, dtype = smol_shaped(work / "smol"), "cuda", torch.bfloat16
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(dev).eval()
    static = StaticCaches.for_model(model, compile=True, graph_steps=8)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    out: dict = {"device": torch.cuda.get_device_name() if cuda else platform.processor() or "cpu",
                 "torch": torch.__version__, "argv": sys.argv[1:], "rows": a.rows, "prompt": a.prompt,
                 "compile_mode_with_graph_steps": "default", "variants": {}}
    length = 512

    def measured(run) -> dict:
        """``run`` (``--steps`` decoding steps) timed, then profiled: per step, its wall time, its GPU
        kernels' time and count, and the top kernels."""
        sync()
        t0 = time.perf_counter()
        run()
        sync()
        wall = (time.perf_counter() - t0) / a.steps
        with profile(activities=acts) as prof:
            run()
            sync()
        gpu, launches, top = kernels(prof)
        return {"wall_ms_per_step": 1000 * wall, "gpu_ms_per_step": gpu / a.steps, "kernels_per_step": launches / a.steps,
                "top": top}

    def primed(cache):
        ids = torch.randint(3, min(100, model.config.vocab_size), (a.rows, a.prompt), device=dev)
        full = torch.ones(a.rows, length, dtype=torch.long, device=dev)
        with torch.no_grad():
            static.forward(ids, torch.arange(a.prompt, device=dev).expand(a.rows, -1), full, cache,
                           torch.arange(a.prompt, device=dev))
        return (torch.full((a.rows, 1), 3, dtype=torch.long, device=dev),
                torch.full((a.rows, 1), a.prompt - 1, dtype=torch.long, device=dev), full,
                torch.tensor([a.prompt], device=dev))

    # reduce-overhead: a CUDA graph per step, as the greedy loop ran before ``Steps`` (graph_steps 1).
    one = StaticCaches.for_model(model, compile=True, graph_steps=1)
    for name in ("eager", "compiled", "reduce-overhead"):
        cache = static.get(a.rows, length)
        tok, p, full, at = primed(cache)
        step = {"eager": static._step, "compiled": static.step, "reduce-overhead": one.step}[name]
        if name != "eager":
            mark_dynamic(static, cache, (tok, p, full))

        def run(n):
            with torch.no_grad():
                for _ in range(n):
                    p.add_(1)
                    if name == "reduce-overhead":
                        torch.compiler.cudagraph_mark_step_begin()  # the previous step's outputs are consumed
                    nxt, _ = step(tok, p, full, cache, at)
                    tok.copy_(nxt)
                    at.add_(1)

        t0 = time.perf_counter()
        run(3)
        sync()
        out["variants"][name] = {"first_3_steps_s": time.perf_counter() - t0, **measured(lambda: run(a.steps))}

    def graphed(static: StaticCaches, name: str) -> None:
        cache = static.get(a.rows, length)
        primed(cache)
        t0 = time.perf_counter()
        with torch.no_grad():  # as the steps above ran (grad mode is in dynamo's guards)
            steps = Steps(static, cache, a.rows)
        sync()
        first = time.perf_counter() - t0
        reps = a.steps // steps.k

        def run() -> None:
            with torch.no_grad():
                for _ in range(reps):
                    steps.replay()

        run()
        out["variants"][name] = {"made_s": first, **measured(run)}

    graphed(static, "8-steps graph")
    # The same with each layer's sibling projections as one product (q, k, v; gate, up): fewer,
    # larger GEMMs a step. The model is changed in place, so this variant comes last.
    probe = torch.randint(3, min(100, model.config.vocab_size), (1, a.prompt), device=dev)
    with torch.no_grad():
        before = model(probe).logits[0, -1].float()
        fused = fuse_projections(model)
        after = model(probe).logits[0, -1].float()
    out["fused_projections"] = {"groups": fused, "max_abs_logit_diff": (after - before).abs().max().item(),
                                "same_argmax": bool(after.argmax() == before.argmax())}
    graphed(StaticCaches.for_model(model, compile=True, graph_steps=8), "8-steps fused")
    for name, v in out["variants"].items():
        print(f"{name:15s} wall {v['wall_ms_per_step']:.3f} ms/step, GPU kernels {v['gpu_ms_per_step']:.3f} ms/step, "
              f"{v['kernels_per_step']:.0f} kernels/step")
        for k, n, s in v["top"][:8]:
            print(f"    {s / a.steps * 1000:8.1f} us/step  x{n / a.steps:.0f}  {k[:110]}")
    diff = out["fused_projections"]["max_abs_logit_diff"]
    tol = FUSED_TOL[dtype]
    failures = [f"the fused model's logits differ from the unfused model's by {diff:.2g} (> {tol:g})"] if diff > tol else []
    finish(out, failures, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
