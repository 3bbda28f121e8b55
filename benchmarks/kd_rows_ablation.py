"""Where the split KD row kernel's time goes, and what the KD head's GEMMs cost with fp32 output
(issue 19, one H200, 2026-11-30). A bound, not a benchmark of record (that is ``kd_head.py``).

1. The split kernel (``row_kernels.kd_rows_split_kernel``, 2,048 columns x 4 warps x 8 programs
   per SM, L2 prefetch on) copied here with parts switched off, on one 2,048 x 49,152 block of
   fp32 logits: without its two meetings, without the divergence maths, without both, and down
   to its skeleton (load both slices, one exp, store the bf16 dlogits). The variants that skip a
   part compute wrong numbers on purpose; only their times mean anything. A torch fp32 -> bf16
   cast of the same block is the copy reference.
2. The four GEMMs of one 2,048-row block, with fp32 and bf16 output, under each cuBLAS backend
   torch offers (``torch.backends.cuda.preferred_blas_library``).

    PYTHONPATH=src python benchmarks/kd_rows_ablation.py     # writes $OUT/probe2.json (kd_rows_ablation.json)
"""
import json
import os
import sys

import torch
import triton
import triton.language as tl

sys.path.insert(0, "src")
from potstill.train import losses as L  # noqa: E402
from potstill.train.row_kernels import (_add2, _combine_lse, _group_barrier, _kd_terms_qp, _max2,  # noqa: E402
                                        _prefetch_l2)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from kd_rows_probe import timeit as _timeit  # noqa: E402


def timeit(fn):
    return _timeit(fn)[0]


V, DT = 49152, torch.bfloat16
res = {"device": torch.cuda.get_device_name(0)}

@triton.jit
def abl_kernel(S, T, OUT, LOSS, LSE, PART, CNT, n_rows, s_stride, t_stride, o_stride, V, scale, a, wp, wq,
               h_sum, kd_coef, ce_coef, MODE: tl.constexpr, K: tl.constexpr, KP: tl.constexpr,
               SLICE: tl.constexpr, FAST: tl.constexpr, PREFETCH: tl.constexpr, MEET: tl.constexpr, MATH: tl.constexpr,
               RED: tl.constexpr):
    pid = tl.program_id(0)
    part = pid % K
    cols = part * SLICE + tl.arange(0, SLICE)
    msk = cols < V
    kk = tl.arange(0, KP)
    kmask = kk < K
    step = tl.num_programs(0) // K
    lines = tl.minimum(part * SLICE + tl.arange(0, SLICE // 32) * 32, V - 1)
    for row in range(pid // K, n_rows, step):
        r = tl.cast(row, tl.int64)
        x = tl.load(S + r * s_stride + cols, mask=msk, other=float("-inf")).to(tl.float32) * scale
        y = tl.load(T + r * t_stride + cols, mask=msk, other=float("-inf")).to(tl.float32) * scale
        if PREFETCH:
            if row + step < n_rows:
                _prefetch_l2(S + (r + step) * s_stride + lines)
                _prefetch_l2(T + (r + step) * t_stride + lines)
        pr = PART + r * (8 * K)
        if RED:
            mx, my = tl.reduce((x, y), 0, _max2)
            ex = tl.exp(x - mx)
            ey = tl.exp(y - my)
            dx, dy = tl.reduce((ex, ey), 0, _add2)
            tl.store(pr + part * 8, mx)
            tl.store(pr + part * 8 + 1, dx)
            tl.store(pr + part * 8 + 2, my)
            tl.store(pr + part * 8 + 3, dy)
        if MEET:
            _group_barrier(CNT + r, K)
        if RED:
            lse_s = _combine_lse(pr, 0, kk, kmask)
            lse_t = _combine_lse(pr, 2, kk, kmask)
        else:
            lse_s = 10.0
            lse_t = 10.0
        q = tl.exp(x - lse_s)
        if MATH:
            loss, h = _kd_terms_qp(x - lse_s, y - lse_t, q, tl.exp(y - lse_t), a, wp, wq, MODE, FAST)
        else:
            loss = x - y
            h = q
        H = h_sum
        if RED:
            loss_sum, h_part = tl.reduce((tl.where(msk, loss, 0.0), tl.where(msk, h, 0.0)), 0, _add2)
            tl.store(LOSS + r * K + part, loss_sum)
            tl.store(pr + part * 8 + 4, h_part)
        if MEET:
            _group_barrier(CNT + r, 2 * K)
        if RED:
            H = tl.sum(tl.load(pr + kk * 8 + 4, mask=kmask, other=0.0, cache_modifier=".cg"), 0)
        g = kd_coef * (h - q * H) + ce_coef * q
        tl.store(OUT + r * o_stride + cols, g.to(OUT.dtype.element_ty), mask=msk)
        if part == 0:
            tl.store(LSE + r, lse_s)

rows = 2048
g = torch.Generator(device="cuda").manual_seed(2)
s = torch.randn(rows, V, device="cuda", generator=g) * 3
t = s + torch.randn(rows, V, device="cuda", generator=g)
o = torch.empty(rows, V, dtype=DT, device="cuda")
a_, wp, wq = L.divergence_params("jsd", beta=0.5)
K = V // 2048
programs = 132 * 8 // K * K
res["ablation_ms_2048_rows"] = {}
for name, kw in (("full", dict(MEET=1, MATH=1, RED=1)), ("no meetings (wrong result)", dict(MEET=0, MATH=1, RED=1)),
                 ("no divergence maths", dict(MEET=1, MATH=0, RED=1)),
                 ("no meetings, no maths", dict(MEET=0, MATH=0, RED=1)),
                 ("load, exp, store only", dict(MEET=0, MATH=0, RED=0))):
    for pf in (True,):
        def run(kw=kw, pf=pf):
            loss = torch.empty((rows, K), dtype=torch.float32, device="cuda")
            lse = torch.empty(rows, dtype=torch.float32, device="cuda")
            part = torch.empty((rows, K, 8), dtype=torch.float32, device="cuda")
            cnt = torch.zeros(rows, dtype=torch.int32, device="cuda")
            abl_kernel[(programs,)](s, t, o, loss, lse, part, cnt, rows, V, V, V, V, 1.0, float(a_), float(wp), float(wq),
                                    -(wp + wq), 1e-3, 0.0, MODE=0, K=K, KP=32, SLICE=2048, FAST=True, PREFETCH=pf,
                                    num_warps=4, **kw)
        ms = timeit(run)
        res["ablation_ms_2048_rows"][name] = ms
        print(name, ms, flush=True)
# copy roof: read 2 fp32 + write bf16 for the block
def copy():
    o.copy_(s.to(DT))
res["torch_cast_copy_ms"] = timeit(copy)  # reads 403 MB, writes 201 MB
print("cast copy", res["torch_cast_copy_ms"])
del s, t, o
torch.cuda.empty_cache()

# GEMMs of one 2,048-row block with fp32 output, by backend
hs = torch.randn(2048, 576, device="cuda", dtype=DT)
ws = torch.randn(V, 576, device="cuda", dtype=DT) * 0.1
ht = torch.randn(2048, 2048, device="cuda", dtype=DT)
wt = torch.randn(V, 2048, device="cuda", dtype=DT) * 0.05
dz = torch.randn(2048, V, device="cuda", dtype=DT) * 1e-3
gw = torch.zeros(V, 576, device="cuda", dtype=torch.float32)
res["gemm_ms"] = {}
for lib in ("default", "cublaslt", "cublas"):
    if lib != "default":
        try:
            torch.backends.cuda.preferred_blas_library(lib)
        except Exception as e:  # noqa
            res["gemm_ms"][lib] = str(e)[:200]; continue
    r = {}
    r["student fp32 out"] = timeit(lambda: torch.mm(hs, ws.t(), out_dtype=torch.float32))
    r["student bf16 out"] = timeit(lambda: torch.mm(hs, ws.t()))
    r["teacher fp32 out"] = timeit(lambda: torch.mm(ht, wt.t(), out_dtype=torch.float32))
    r["teacher bf16 out"] = timeit(lambda: torch.mm(ht, wt.t()))
    r["grad_hidden"] = timeit(lambda: torch.mm(dz, ws))
    r["grad_weight fp32 acc"] = timeit(lambda: torch.addmm(gw, dz.t(), hs, out_dtype=torch.float32, out=gw))
    r["grad_weight bf16 new"] = timeit(lambda: torch.mm(dz.t(), hs))
    res["gemm_ms"][lib] = r
    print(lib, json.dumps(r), flush=True)
torch.backends.cuda.preferred_blas_library("default")
json.dump(res, open(os.path.join(os.environ.get("OUT", "/tmp"), "probe2.json"), "w"), indent=1)
