"""One-off probe (issue 19, 2026-11-30, one H200): the KD row kernel's launch shapes alone on one
2,048 x 49,152 block of fp32 logits, with and without the split kernel's L2 prefetch of the next
row, and persistent grids of the three-sweep kernel (to see whether its second and third sweeps
hit L2); then the KD head at 8,192 / 32,768 tokens with the prefetch, with 2 GiB blocks, and
Liger's default, side by side. Each variant is first checked against the torch backend (exit 1
past 1e-4); the head's gradients with and without the prefetch must be bitwise equal.

    PYTHONPATH=src python benchmarks/kd_rows_probe.py      # writes $OUT/rows.json (kd_rows_probe.json)

The defaults it found are in ``fused_head``; ``kd_head.py`` is the benchmark of record.
"""
import gc
import json
import os
import statistics
import sys

import torch

sys.path.insert(0, "src")
from potstill.train import fused_head as FH  # noqa: E402
from potstill.train import losses as L  # noqa: E402

V, HS, HT, DT, BETA = 49152, 576, 2048, torch.bfloat16, 0.5
KNOBS = ("SPLIT_SLICE", "SPLIT_WARPS", "SPLIT_PROGRAMS_PER_SM", "SPLIT_PREFETCH", "GRID_PROGRAMS", "TRITON_WARPS",
         "TRITON_BLOCK", "KD_CHUNK_BYTES")
DEFAULT = {k: getattr(FH, k) for k in KNOBS}
VARIANTS = [
    ("split 2048/4w/8 no prefetch", dict(SPLIT_PREFETCH=False)),
    ("split 2048/4w/8 prefetch", dict(SPLIT_PREFETCH=True)),
    ("split 2048/4w/6 prefetch", dict(SPLIT_PREFETCH=True, SPLIT_PROGRAMS_PER_SM=6)),
    ("split 2048/8w/3 prefetch", dict(SPLIT_PREFETCH=True, SPLIT_WARPS=8, SPLIT_PROGRAMS_PER_SM=3)),
    ("split 4096/8w/4 prefetch", dict(SPLIT_PREFETCH=True, SPLIT_SLICE=4096, SPLIT_WARPS=8, SPLIT_PROGRAMS_PER_SM=4)),
    ("split 1024/2w/16 prefetch", dict(SPLIT_PREFETCH=True, SPLIT_SLICE=1024, SPLIT_WARPS=2, SPLIT_PROGRAMS_PER_SM=16)),
    ("split 1024/4w/12 prefetch", dict(SPLIT_PREFETCH=True, SPLIT_SLICE=1024, SPLIT_WARPS=4, SPLIT_PROGRAMS_PER_SM=12)),
    ("three-sweep per row", dict(SPLIT_SLICE=0)),
    ("three-sweep grid 132 16w/4096", dict(SPLIT_SLICE=0, GRID_PROGRAMS=132)),
    ("three-sweep grid 132 32w/8192", dict(SPLIT_SLICE=0, GRID_PROGRAMS=132, TRITON_WARPS=32, TRITON_BLOCK=8192)),
    ("three-sweep grid 264 16w/4096", dict(SPLIT_SLICE=0, GRID_PROGRAMS=264)),
    ("three-sweep grid 66 32w/8192", dict(SPLIT_SLICE=0, GRID_PROGRAMS=66, TRITON_WARPS=32, TRITON_BLOCK=8192)),
]


def setk(**kw):
    """fused_head's knobs at their defaults, then ``kw``."""
    for k, v in {**DEFAULT, **kw}.items():
        setattr(FH, k, v)


def timeit(fn, reps=15, warm=3):
    """(median, min) milliseconds of ``fn()`` over ``reps`` CUDA-event timings after ``warm`` calls."""
    ts = []
    for i in range(warm + reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        if i >= warm:
            ts.append(a.elapsed_time(b))
    return statistics.median(ts), min(ts)


def check_variants(out, params, g):
    """Each split variant against the torch backend on 1,024 rows (V and a ragged V - 77)."""
    for Vc in (V, V - 77):
        s = torch.randn(1024, Vc, device="cuda", generator=g) * 3
        t = s + torch.randn(1024, Vc, device="cuda", generator=g) * 0.1
        ref_o = torch.empty(1024, Vc, device="cuda", dtype=torch.float32)
        setk()
        rl, rlse = FH._kd_rows(s, t, ref_o, 1.0, params, 1e-3, 0.0, "torch")
        for name, kw in (("split_pf", dict(SPLIT_PREFETCH=True)), ("split", dict(SPLIT_PREFETCH=False)),
                         ("split_pf_4096", dict(SPLIT_PREFETCH=True, SPLIT_SLICE=4096, SPLIT_WARPS=8,
                                                SPLIT_PROGRAMS_PER_SM=4))):
            setk(**kw)
            o = torch.empty(1024, Vc, device="cuda", dtype=torch.float32)
            loss, lse = FH._kd_rows(s, t, o, 1.0, params, 1e-3, 0.0, "triton")
            err = ((o - ref_o).norm() / ref_o.norm()).item()
            lerr = ((loss - rl).abs().max() / rl.abs().max()).item()
            out["checks"][f"{name}_V{Vc}"] = {"dlogits_rel": err, "loss_rel": lerr,
                                              "lse_max_abs": (lse - rlse).abs().max().item()}
            print(name, Vc, err, lerr, flush=True)
            if not (err < 1e-4 and lerr < 1e-4):
                sys.exit(f"{name} at V={Vc}: dlogits error {err:.2e}, loss error {lerr:.2e} (tolerance 1e-4)")


def time_variants(out, params, g, rows=2048):
    """Each launch shape alone on one block; returns the fastest's settings."""
    s = torch.randn(rows, V, device="cuda", generator=g) * 3
    t = s + torch.randn(rows, V, device="cuda", generator=g)
    o = torch.empty(rows, V, dtype=DT, device="cuda")
    for name, kw in VARIANTS:
        setk(**kw)
        try:
            med, mn = timeit(lambda: FH._kd_rows(s, t, o, 1.0, params, 1e-3, 0.0, "triton"))
            r = {"variant": name, "ms_2048_rows": med, "min": mn, "tb_per_s_one_pass": rows * V * 10 / med / 1e9}
        except Exception as e:  # noqa: BLE001 - a shape that does not launch is a row of the table
            r = {"variant": name, "error": f"{type(e).__name__}: {str(e)[:300]}"}
        out["kernel"].append(r)
        print(json.dumps(r), flush=True)
    ok = [r for r in out["kernel"] if "ms_2048_rows" in r]
    return min(ok, key=lambda r: r["ms_2048_rows"])["variant"]


def inputs(n, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    return {"hs": torch.randn(n, HS, device="cuda", generator=g).to(DT).requires_grad_(),
            "ws": (torch.randn(V, HS, device="cuda", generator=g) * 3 / HS**0.5).to(DT).requires_grad_(),
            "ht": torch.randn(n, HT, device="cuda", generator=g).to(DT),
            "wt": (torch.randn(V, HT, device="cuda", generator=g) * 3 / HT**0.5).to(DT)}


def head(d):
    d["hs"].grad = d["ws"].grad = None
    FH.fused_linear_kd(d["hs"], d["ws"], d["ht"], d["wt"], kind="jsd", beta=BETA).backward()


def time_heads(out, best):
    try:
        from liger_kernel.transformers.fused_linear_jsd import LigerFusedLinearJSD
    except ImportError:
        LigerFusedLinearJSD = None
    best_kw = dict(VARIANTS)[best]
    for n in (8192, 32768):
        d = inputs(n)
        setk(SPLIT_PREFETCH=False)
        head(d)
        g0 = (d["hs"].grad.clone(), d["ws"].grad.clone())
        setk(SPLIT_PREFETCH=True)
        head(d)
        same = bool(torch.equal(g0[0], d["hs"].grad) and torch.equal(g0[1], d["ws"].grad))
        out["checks"][f"head_{n}_prefetch_bitwise_equal"] = same
        print("prefetch grads bitwise equal", same, flush=True)
        if not same:
            sys.exit(f"{n} tokens: the L2 prefetch changed the gradients")
        cases = [("no L2 prefetch", dict(SPLIT_PREFETCH=False)), ("prefetch", dict(SPLIT_PREFETCH=True)),
                 ("prefetch, 2 GiB blocks", dict(SPLIT_PREFETCH=True, KD_CHUNK_BYTES=1 << 31)),
                 (f"best kernel: {best}", best_kw), (f"best kernel: {best}, 2 GiB", {**best_kw, "KD_CHUNK_BYTES": 1 << 31}),
                 ("no L2 prefetch (repeat)", dict(SPLIT_PREFETCH=False))]
        for name, kw in cases:
            setk(**kw)
            med, mn = timeit(lambda: head(d), reps=10)
            r = {"tokens": n, "impl": name, "ms": med, "min": mn}
            out["head"].append(r)
            print(json.dumps(r), flush=True)
        if LigerFusedLinearJSD is not None:
            def liger():
                d["hs"].grad = d["ws"].grad = None
                LigerFusedLinearJSD(jsd_beta=BETA)(d["hs"], d["ws"], d["ht"], d["wt"], None).backward()
            for _ in range(2):
                med, mn = timeit(liger, reps=10)
                r = {"tokens": n, "impl": "liger default", "ms": med, "min": mn}
                out["head"].append(r)
                print(json.dumps(r), flush=True)
        del d
        gc.collect()
        torch.cuda.empty_cache()
    setk()


def main():
    params = L.divergence_params("jsd", beta=BETA)
    out = {"device": torch.cuda.get_device_name(0), "kernel": [], "head": [], "checks": {}}
    g = torch.Generator(device="cuda").manual_seed(2)
    check_variants(out, params, g)
    best = time_variants(out, params, g)
    print("best kernel", best, flush=True)
    gc.collect()
    torch.cuda.empty_cache()
    time_heads(out, best)
    with open(os.path.join(os.environ.get("OUT", "/tmp"), "rows.json"), "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
