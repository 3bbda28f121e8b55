"""GPU benchmark of the loss heads in potstill.train.fused_head against Liger-Kernel and the
materialised-logits versions.

Shapes follow a SmolLM2-135M student (H=576) and a 2048-wide teacher sharing the 49,152-token
vocabulary, bf16 inputs. Each case is forward + backward of the loss head alone; times are the
median of --reps CUDA-event timings after --warmup runs, peak memory is
``max_memory_allocated`` during one forward + backward minus what was allocated before it.

    PYTHONPATH=src python benchmarks/kd_head.py --out kd_head.json [--sweep]

Liger-Kernel is optional (pip install liger-kernel==0.8.5); its rows are skipped without it.
Liger is timed at its default chunking and at each chunk budget of ``LIGER_CONSTS`` (its own
``_CHUNK_MEM_CONST``, 8 on a B200); the best of those is reported as "liger best".

Correctness: every potstill head against float64 autograd on the same bf16-valued inputs, in
general and with a teacher close to the student (late training). The script exits 1 when a
default head's error passes ``TOLERANCE`` (``--logits-dtype bfloat16`` shows it failing).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from potstill.train import fused_head as FH
from potstill.train import losses as L

HS, HT, V = 576, 2048, 49152
# Relative L2 error vs float64 allowed for the default heads (gradients; the loss gets 1e-4).
TOLERANCE = {"jsd": 5e-3, "jsd_close": 5e-3, "forward_kl": 5e-3, "reverse_kl": 5e-3, "ce": 5e-3, "sparse": 1e-2}
LIGER_CONSTS = (1, 2, 4, 8, 16, 32)
KD_KW: dict = {}  # --logits-dtype bfloat16 puts {"logits_dtype": None, "accum_dtype": None} here
BETA = 0.5
TOPK = 20  # what chat APIs return at most (OpenAI top_logprobs <= 20)
DT = torch.bfloat16

try:
    from liger_kernel.transformers.fused_linear_cross_entropy import LigerFusedLinearCrossEntropyLoss
    from liger_kernel.transformers.fused_linear_jsd import LigerFusedLinearJSD

    try:
        from importlib.metadata import version

        LIGER = version("liger-kernel")
    except ImportError:  # PackageNotFoundError: imported from a path without its dist-info
        LIGER = "unknown version"
except ImportError:
    LIGER = None


def make_inputs(n: int, seed: int = 0) -> dict:
    g = torch.Generator(device="cuda").manual_seed(seed)
    # Weight scales give logits with a std of about 3, roughly what trained LM heads produce.
    d = {
        "hs": torch.randn(n, HS, device="cuda", generator=g).to(DT).requires_grad_(),
        "ws": (torch.randn(V, HS, device="cuda", generator=g) * 3 / HS**0.5).to(DT).requires_grad_(),
        "ht": torch.randn(n, HT, device="cuda", generator=g).to(DT),
        "wt": (torch.randn(V, HT, device="cuda", generator=g) * 3 / HT**0.5).to(DT),
        "labels": torch.randint(0, V, (n,), device="cuda", generator=g),
    }
    ids, lps = [], []
    with torch.no_grad():
        for c0 in range(0, n, 2048):  # teacher top-k without an N x V tensor
            lp = (d["ht"][c0:c0 + 2048] @ d["wt"].T).float().log_softmax(-1)
            v, i = lp.topk(TOPK, dim=-1)
            ids.append(i)
            lps.append(v)
    d["topk_ids"], d["topk_lp"] = torch.cat(ids), torch.cat(lps)
    return d


# --- the heads under test: each call runs forward + backward ---------------------------------


def potstill_jsd(d, **kw):
    FH.fused_linear_kd(d["hs"], d["ws"], d["ht"], d["wt"], kind="jsd", beta=BETA, **{**KD_KW, **kw}).backward()


def with_settings(d, fn, **settings):
    """``fn(d)`` with fused_head's module settings (e.g. the row kernel) changed for the call."""
    saved = {k: getattr(FH, k) for k in settings}
    for k, v in settings.items():
        setattr(FH, k, v)
    try:
        fn(d)
    finally:
        for k, v in saved.items():
            setattr(FH, k, v)


def liger_jsd(d, const=None):
    """Liger's head; ``const``: its chunk-memory constant (None: what it picks on this GPU)."""
    if const is None:
        LigerFusedLinearJSD(jsd_beta=BETA)(d["hs"], d["ws"], d["ht"], d["wt"], None).backward()
        return
    import liger_kernel.ops.fused_linear_jsd as LJ

    saved = LJ._max_capability, LJ._CHUNK_MEM_CONST_B200
    LJ._max_capability, LJ._CHUNK_MEM_CONST_B200 = (lambda _dev: 100), const  # its B200 branch, our constant
    try:
        LigerFusedLinearJSD(jsd_beta=BETA)(d["hs"], d["ws"], d["ht"], d["wt"], None).backward()
    finally:
        LJ._max_capability, LJ._CHUNK_MEM_CONST_B200 = saved


def materialised_jsd(d):
    L.generalized_jsd(d["hs"] @ d["ws"].T, d["ht"] @ d["wt"].T, beta=BETA).backward()


def potstill_ce(d, **kw):
    FH.fused_linear_cross_entropy(d["hs"], d["ws"], d["labels"], **kw).backward()


def liger_ce(d):
    LigerFusedLinearCrossEntropyLoss()(d["ws"], d["hs"], d["labels"]).backward()


def materialised_ce(d):
    F.cross_entropy((d["hs"] @ d["ws"].T).float(), d["labels"]).backward()


def potstill_sparse(d, **kw):
    FH.fused_linear_sparse_kd(d["hs"], d["ws"], d["topk_ids"], d["topk_lp"], **kw).backward()


def materialised_sparse(d):
    L.sparse_topk_kd(d["hs"] @ d["ws"].T, d["topk_ids"], d["topk_lp"]).backward()


# --- measurement ------------------------------------------------------------------------------


def _clear(d):
    for k in ("hs", "ws"):
        d[k].grad = None


def measure(fn, d, warmup: int, reps: int) -> dict:
    try:
        for _ in range(warmup):
            _clear(d)
            fn(d)
        torch.cuda.synchronize()
        times = []
        for _ in range(reps):
            _clear(d)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn(d)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        _clear(d)
        gc.collect()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn(d)
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
        _clear(d)
        ms = statistics.median(times)
        n = d["hs"].shape[0]
        return {"status": "ok", "ms_median": ms, "ms_min": min(times), "ms_max": max(times), "reps": reps,
                "tokens_per_s": n / (ms / 1e3), "peak_mib": peak / 2**20}
    except torch.cuda.OutOfMemoryError as e:
        msg = str(e).split("\n")[0][:200]
    _clear(d)
    gc.collect()
    torch.cuda.empty_cache()
    return {"status": "OOM", "error": msg}


def rel(a, b) -> float:
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp(min=1e-30)).item()


def grads_of(fn, d):
    _clear(d)
    out = fn(d)
    return out, d["hs"].grad.clone(), d["ws"].grad.clone()


def close_teacher(d, eps: float = 0.05) -> dict:
    """A teacher whose logits are the student's plus a small perturbation (late training):
    ``ht = [hs, r]``, ``wt = [ws, eps * R]``, so ``ht @ wt.T = hs @ ws.T + eps * r @ R.T``."""
    n = d["hs"].shape[0]
    g = torch.Generator(device="cuda").manual_seed(5)
    r = torch.randn(n, HT - HS, device="cuda", generator=g).to(DT)
    R = (torch.randn(V, HT - HS, device="cuda", generator=g) * 3 * eps / (HT - HS) ** 0.5).to(DT)
    return {**d, "ht": torch.cat([d["hs"].detach(), r], 1), "wt": torch.cat([d["ws"].detach(), R], 1)}


def _ref_grads(d, loss_fn):
    """Loss and gradients in float64 autograd through the materialised logits."""
    hs64 = d["hs"].detach().double().requires_grad_()
    ws64 = d["ws"].detach().double().requires_grad_()
    loss = loss_fn(hs64 @ ws64.T)
    loss.backward()
    return loss.detach(), hs64.grad, ws64.grad


def _compare(out, name, d, fn, ref, gate=None):
    """Relative errors of ``fn(d)`` against ``ref`` into ``out[name]``; past ``TOLERANCE[gate]``
    it is listed in ``out["failed"]``."""
    _clear(d)
    loss = fn(d)
    loss.backward()
    r = {"loss": loss.item(), "loss_rel_err": rel(loss.detach(), ref[0]),
         "grad_hidden_rel_err": rel(d["hs"].grad, ref[1]), "grad_weight_rel_err": rel(d["ws"].grad, ref[2])}
    _clear(d)
    if gate is not None:
        r["tolerance"] = TOLERANCE[gate]
        worst = max(r["grad_hidden_rel_err"], r["grad_weight_rel_err"])
        if worst > TOLERANCE[gate] or r["loss_rel_err"] > 1e-4 or not math.isfinite(worst):
            out["failed"].append(f"{name}: gradient error {worst:.2e} (tolerance {TOLERANCE[gate]:.0e}), "
                                 f"loss error {r['loss_rel_err']:.1e}")
    out[name] = r


def correctness(n: int = 2048) -> dict:
    """bf16 heads vs float64 autograd on the same (bf16-valued) inputs; relative L2 errors.
    ``out["failed"]`` lists the default heads past ``TOLERANCE``."""
    base = make_inputs(n, seed=1)
    out = {"tokens": n, "tolerance": TOLERANCE, "failed": []}
    for case, d in (("", base), ("_close", close_teacher(base))):
        t64 = d["ht"].double() @ d["wt"].double().T
        ref = _ref_grads(d, lambda s: L.generalized_jsd(s, t64, beta=BETA))
        out[f"jsd{case}_ref_loss"] = ref[0].item()
        _compare(out, f"jsd{case}_potstill", d, lambda d: FH.fused_linear_kd(d["hs"], d["ws"], d["ht"], d["wt"],
                                                                             beta=BETA, **KD_KW), ref, gate=f"jsd{case}")
        _compare(out, f"jsd{case}_potstill_bf16_logits", d, lambda d: FH.fused_linear_kd(
            d["hs"], d["ws"], d["ht"], d["wt"], beta=BETA, logits_dtype=None, accum_dtype=None), ref)
        _compare(out, f"jsd{case}_potstill_torch_backend", d, lambda d: FH.fused_linear_kd(
            d["hs"], d["ws"], d["ht"], d["wt"], beta=BETA, backend="torch", **KD_KW), ref)
        if LIGER:
            _compare(out, f"jsd{case}_liger", d, lambda d: LigerFusedLinearJSD(jsd_beta=BETA)(
                d["hs"], d["ws"], d["ht"], d["wt"], None), ref)
        _compare(out, f"jsd{case}_materialised_bf16", d, lambda d: L.generalized_jsd(
            d["hs"] @ d["ws"].T, d["ht"] @ d["wt"].T, beta=BETA), ref)
        del t64, ref
    d = base
    t64 = d["ht"].double() @ d["wt"].double().T
    for kind in ("forward_kl", "reverse_kl"):
        r = _ref_grads(d, lambda s: L.kd_divergence(s, t64, kind=kind))
        _compare(out, f"{kind}_potstill", d, lambda d: FH.fused_linear_kd(d["hs"], d["ws"], d["ht"], d["wt"],
                                                                          kind=kind, **KD_KW), r, gate=kind)
    del t64
    ref = _ref_grads(d, lambda s: F.cross_entropy(s, d["labels"]))
    _compare(out, "ce_potstill", d, lambda d: FH.fused_linear_cross_entropy(d["hs"], d["ws"], d["labels"]), ref,
             gate="ce")
    if LIGER:
        _compare(out, "ce_liger", d, lambda d: LigerFusedLinearCrossEntropyLoss()(d["ws"], d["hs"], d["labels"]), ref)
    ref = _ref_grads(d, lambda s: L.sparse_topk_kd(s, d["topk_ids"], d["topk_lp"].double()))
    _compare(out, "sparse_top20_potstill", d, lambda d: FH.fused_linear_sparse_kd(
        d["hs"], d["ws"], d["topk_ids"], d["topk_lp"]), ref, gate="sparse")
    del d, base, ref
    gc.collect()
    torch.cuda.empty_cache()
    return out


def kernel_sweep(rows: int = 2048) -> list:
    """The KD row kernels alone on one block of fp32 logits: the three-sweep kernel and the split
    kernel per (slice, warps, programs per SM, L2 prefetch). Reported only; the heads run the defaults."""
    g = torch.Generator(device="cuda").manual_seed(2)
    s = torch.randn(rows, V, device="cuda", generator=g) * 3
    t = s + torch.randn(rows, V, device="cuda", generator=g)
    out = torch.empty(rows, V, dtype=DT, device="cuda")
    params = L.divergence_params("jsd", beta=BETA)
    knobs = ("SPLIT_SLICE", "SPLIT_WARPS", "SPLIT_PROGRAMS_PER_SM", "SPLIT_PREFETCH")
    saved = {k: getattr(FH, k) for k in knobs}
    res = []
    for sl, warps, pps, pf in ((0, 16, 0, False), (8192, 16, 1, True), (4096, 8, 4, True), (2048, 4, 8, True),
                               (2048, 4, 8, False), (2048, 8, 3, True)):
        for k, v in zip(knobs, (sl, warps, pps, pf)):
            setattr(FH, k, v)
        times = []
        for i in range(13):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            FH._kd_rows(s, t, out, 1.0, params, 1e-3, 0.0, "triton")
            b.record()
            b.synchronize()
            if i >= 3:
                times.append(a.elapsed_time(b))
        ms = statistics.median(times)
        # Bytes if each fp32 logit is read once and each bf16 dlogit written once.
        res.append({"kernel": "split" if sl else "three-sweep", "slice": sl, "warps": warps if sl else FH.TRITON_WARPS,
                    "programs_per_sm": pps, "l2_prefetch": pf, "ms_per_1024_rows": ms * 1024 / rows,
                    "gb_per_s_one_pass": rows * V * 10 / ms / 1e6})
    for k, v in saved.items():
        setattr(FH, k, v)
    return res


def matmuls_only(d, chunk_size=None):
    """The default KD head's chunk loop (fp32 logits and accumulation) without the row kernel: its GEMM time."""
    hs, ws, ht, wt = d["hs"].detach(), d["ws"].detach(), d["ht"], d["wt"]
    cs = chunk_size or FH.default_chunk_size(hs.shape[0], V, 8, FH.KD_CHUNK_BYTES)

    def chunk_fn(z, c0, c1):
        t = FH._logits(ht[c0:c1], wt, torch.float32)
        del t
        return torch.zeros((), device=z.device), z.view(ws.dtype)[:, :V]

    FH._run_chunks(hs, ws, cs, True, True, torch.float32, chunk_fn, torch.float32)


def matmul_tflops() -> float:
    a = torch.randn(8192, 8192, device="cuda", dtype=DT)
    b = torch.randn(8192, 8192, device="cuda", dtype=DT)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(10):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        a @ b
        e.record()
        e.synchronize()
        times.append(s.elapsed_time(e))
    return 2 * 8192**3 / (statistics.median(times) / 1e3) / 1e12


def _header() -> dict:
    prop = torch.cuda.get_device_properties(0)
    return {
        "device": torch.cuda.get_device_name(0),
        "sm_count": prop.multi_processor_count,
        "torch": torch.__version__,
        "triton": getattr(FH.triton, "__version__", None) if FH.HAS_TRITON else None,
        "liger_kernel": LIGER,
        "shapes": {"student_hidden": HS, "teacher_hidden": HT, "vocab": V, "beta": BETA, "topk": TOPK,
                   "dtype": "bfloat16"},
        "method": "forward+backward of the loss head alone; median of CUDA-event times after warm-up; "
                  "peak_mib = max_memory_allocated during one fwd+bwd minus memory allocated before it",
        "settings": {k: getattr(FH, k) for k in ("TRITON_BLOCK", "TRITON_WARPS", "PROGRAMS_PER_SM", "SPLIT_SLICE",
                                                  "SPLIT_WARPS", "SPLIT_PROGRAMS_PER_SM", "SPLIT_PREFETCH", "FAST_LOG",
                                                  "KD_CHUNK_BYTES")},
    }


def _cases(n: int, sweep: bool) -> list:
    """``(head, impl, fn(d), matmul FLOPs)`` timed at ``n`` tokens."""
    flops_kd = 2 * n * V * (HT + 3 * HS)  # teacher fwd, student fwd, two student bwd matmuls
    flops_ce = 2 * n * V * 3 * HS
    cases = [
        ("kd_jsd", "potstill", potstill_jsd, flops_kd),
        ("kd_jsd", "potstill (repeat)", potstill_jsd, flops_kd),
        ("kd_jsd", "potstill bf16 logits", lambda d: potstill_jsd(d, logits_dtype=None, accum_dtype=None), flops_kd),
        ("kd_jsd", "potstill chunk=1024", lambda d: potstill_jsd(d, chunk_size=1024), flops_kd),
        ("kd_jsd", "potstill three-sweep row kernel", lambda d: with_settings(d, potstill_jsd, SPLIT_SLICE=0),
         flops_kd),
        ("kd_jsd", "potstill, no L2 prefetch", lambda d: with_settings(d, potstill_jsd, SPLIT_PREFETCH=False),
         flops_kd),
        ("kd_jsd", "potstill GEMMs only (no row kernel)", matmuls_only, flops_kd),
        ("kd_jsd", "liger", liger_jsd, flops_kd),
        ("kd_jsd", "liger (repeat)", liger_jsd, flops_kd),
        *[("kd_jsd", f"liger const={c}", lambda d, c=c: liger_jsd(d, c), flops_kd) for c in LIGER_CONSTS],
        ("kd_jsd", "materialised", materialised_jsd, flops_kd),
        ("ce", "potstill", potstill_ce, flops_ce),
        ("ce", "liger", liger_ce, flops_ce),
        ("ce", "materialised", materialised_ce, flops_ce),
        (f"sparse_top{TOPK}_fkl", "potstill", potstill_sparse, flops_ce),
        (f"sparse_top{TOPK}_fkl", "materialised", materialised_sparse, flops_ce),
    ]
    if sweep:
        for cs in (512, 4096):
            cases.append(("kd_jsd", f"potstill chunk={cs}", lambda d, cs=cs: potstill_jsd(d, chunk_size=cs), flops_kd))
        for cs in (1024, 4096):
            cases.append(("ce", f"potstill chunk={cs}", lambda d, cs=cs: potstill_ce(d, chunk_size=cs), flops_ce))
            cases.append((f"sparse_top{TOPK}_fkl", f"potstill chunk={cs}",
                          lambda d, cs=cs: potstill_sparse(d, chunk_size=cs), flops_ce))
    return [c for c in cases if LIGER or not c[1].startswith("liger")]


def _time_heads(args, tflops: float) -> list:
    rows = []
    for n in [int(x) for x in args.tokens.split(",")]:
        d = make_inputs(n)
        for head, impl, fn, flops in _cases(n, args.sweep):
            r = {"head": head, "impl": impl, "tokens": n, **measure(fn, d, args.warmup, args.reps)}
            if r["status"] == "ok":
                r["matmul_floor_ms"] = flops / (tflops * 1e12) * 1e3
            rows.append(r)
            print(json.dumps(r), flush=True)
        del d
        gc.collect()
        torch.cuda.empty_cache()
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="kd_head.json")
    ap.add_argument("--tokens", default="8192,32768")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--sweep", action="store_true", help="also time the row kernels alone and more chunk sizes")
    ap.add_argument("--logits-dtype", choices=["auto", "bfloat16"], default="auto",
                    help="bfloat16: the KD head's old bf16 logits and accumulation (fails the correctness gate)")
    ap.add_argument("--correctness-only", action="store_true")
    args = ap.parse_args()
    if args.logits_dtype == "bfloat16":
        KD_KW.update(logits_dtype=None, accum_dtype=None)
    t0 = time.time()
    report = _header()
    report["bf16_matmul_tflops_8192cubed"] = matmul_tflops()
    print(f"matmul {report['bf16_matmul_tflops_8192cubed']:.0f} TFLOP/s", flush=True)
    report["correctness"] = correctness()
    print(json.dumps(report["correctness"], indent=1), flush=True)
    failed = report["correctness"]["failed"]
    if args.correctness_only:
        return _finish(report, args, [], t0, failed)
    if args.sweep:
        report["kernel_sweep"] = kernel_sweep()
        for r in report["kernel_sweep"]:
            print("kernel sweep", json.dumps(r), flush=True)
    return _finish(report, args, _time_heads(args, report["bf16_matmul_tflops_8192cubed"]), t0, failed)


def _ratios(rows: list) -> list:
    """potstill's JSD head against Liger's default and Liger's best chunk budget, per token count."""
    out = []
    for n in sorted({r["tokens"] for r in rows}):
        ok = {r["impl"]: r for r in rows if r["tokens"] == n and r["head"] == "kd_jsd" and r["status"] == "ok"}
        if "potstill" not in ok or "liger" not in ok:
            continue
        best = min((r for k, r in ok.items() if k.startswith("liger const=")), key=lambda r: r["ms_median"],
                   default=ok["liger"])
        p = ok["potstill"]["ms_median"]
        out.append({"tokens": n, "potstill_ms": p, "liger_default_ms": ok["liger"]["ms_median"],
                    "liger_best_ms": best["ms_median"], "liger_best": best["impl"],
                    "x_liger_default": ok["liger"]["ms_median"] / p, "x_liger_best": best["ms_median"] / p,
                    "goal_3x_liger_default_met": ok["liger"]["ms_median"] / p >= 3.0})
    return out


def _finish(report, args, rows, t0, failed) -> int:
    report["results"] = rows
    report["vs_liger"] = _ratios(rows)
    report["seconds"] = time.time() - t0
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)
    print(f"\n{'head':<18}{'impl':<38}{'tokens':>7}{'ms':>9}{'Mtok/s':>8}{'peak MiB':>10}")
    for r in rows:
        if r["status"] == "ok":
            print(f"{r['head']:<18}{r['impl']:<38}{r['tokens']:>7}{r['ms_median']:>9.2f}"
                  f"{r['tokens_per_s'] / 1e6:>8.2f}{r['peak_mib']:>10.0f}")
        else:
            print(f"{r['head']:<18}{r['impl']:<38}{r['tokens']:>7}  {r['status']}")
    for r in report["vs_liger"]:
        print(f"JSD {r['tokens']} tokens: {r['x_liger_default']:.2f}x Liger default, {r['x_liger_best']:.2f}x Liger "
              f"best ({r['liger_best']}); 3x goal {'met' if r['goal_3x_liger_default_met'] else 'MISSED'}")
    c = report["correctness"]
    for k in ("jsd_potstill", "jsd_close_potstill", "jsd_close_potstill_bf16_logits", "jsd_close_liger"):
        if k in c:
            print(f"{k:<34} grad error hidden {c[k]['grad_hidden_rel_err']:.2e} weight {c[k]['grad_weight_rel_err']:.2e}")
    if failed:
        print("CORRECTNESS FAILED:\n  " + "\n  ".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
