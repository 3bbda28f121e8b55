"""Probe (issue 19): does running the KD head's row kernel beside its GEMMs, on a second CUDA stream,
shorten the head at 32,768 tokens?

``fused_linear_kd`` runs each block of rows in order on one stream: student logits, teacher logits
(GEMMs, compute-bound), the row kernel (memory-bound: it reads the fp32 logits and writes the
dlogits), then the grad_hidden and grad_weight GEMMs. Here the row kernel of block ``i`` runs on a
side stream while the main stream computes block ``i + 1``'s logits, and the next block's row
kernel while the main stream runs block ``i``'s gradient GEMMs, so two blocks of logits are alive
at once (twice the block memory). Same kernels, same order of accumulation into grad_weight, so
the gradients must come out equal to the default head's (checked; the script exits 1 otherwise).

Prediction (KD_HEAD.md's numbers for 32,768 tokens, 2,048-row blocks): GEMMs alone 21.05 ms, the
whole head 29.3 ms, so perfect overlap would give ~21-22 ms (3.5x Liger's 76.8 ms); if the GEMM
kernels hold every SM the row kernel can only fill their tails, and the gain is small.

    PYTHONPATH=src:. python benchmarks/kd_overlap_probe.py --out kd_overlap_probe.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from benchmarks.kd_head import BETA, LIGER, liger_jsd, make_inputs, matmul_tflops, measure, rel
from potstill.train import fused_head as FH
from potstill.train import losses as L

_SIDE: dict = {}


def overlapped_jsd(hs: torch.Tensor, ws: torch.Tensor, ht: torch.Tensor, wt: torch.Tensor, cs: int):
    """JSD(beta) head, mean over rows, fp32 logits and grad_weight (the defaults): (loss, grad_h, grad_w)."""
    N, V = hs.shape[0], ws.shape[0]
    params = L.divergence_params("jsd", beta=BETA)
    gs = 1.0 / N
    dev = hs.device
    main = torch.cuda.current_stream(dev)
    side = _SIDE.setdefault(dev, torch.cuda.Stream(dev))
    grad_h = torch.empty_like(hs)
    gw = torch.zeros(ws.shape, dtype=torch.float32, device=dev)
    total = torch.zeros((), dtype=torch.float32, device=dev)
    blocks = [(c0, min(N, c0 + cs)) for c0 in range(0, N, cs)]

    def logits(i):
        c0, c1 = blocks[i]
        z = FH._logits(hs[c0:c1], ws, torch.float32)
        t = FH._logits(ht[c0:c1], wt, torch.float32)
        ready = torch.cuda.Event()
        ready.record(main)
        return z, t, ready

    pending = logits(0)
    for i, (c0, c1) in enumerate(blocks):
        z, t, ready = pending
        side.wait_event(ready)
        with torch.cuda.stream(side):
            out = z.view(ws.dtype)[:, :V]  # bf16 dlogits over the fp32 logits, as the default head writes them
            rows, _ = FH._kd_rows(z, t, out, 1.0, params, gs, 0.0, "triton")
            part = rows.sum()
            done = torch.cuda.Event()
            done.record(side)
        z.record_stream(side)
        t.record_stream(side)
        if i + 1 < len(blocks):
            pending = logits(i + 1)  # the main stream's GEMMs while the side stream runs block i's rows
        main.wait_event(done)
        part.record_stream(main)
        total += part
        torch.mm(out, ws, out=grad_h[c0:c1])
        FH._accumulate_grad_weight(gw, out, hs[c0:c1])
        del z, t, out
    return total * gs, grad_h, gw


def default_jsd(d, cs):
    hs, ws = d["hs"].detach().requires_grad_(), d["ws"].detach().requires_grad_()
    loss = FH.fused_linear_kd(hs, ws, d["ht"], d["wt"], kind="jsd", beta=BETA, chunk_size=cs)
    loss.backward()
    return loss.detach(), hs.grad, ws.grad


def overlap_jsd(d, cs, carveout=0):
    """``carveout``: SMs cuBLAS leaves free (torch's experimental SM carve-out), for the row kernel."""
    if carveout:
        torch._C._set_sm_carveout_experimental(carveout)
    try:
        loss, gh, gw = overlapped_jsd(d["hs"].detach(), d["ws"].detach(), d["ht"], d["wt"], cs)
    finally:
        if carveout:
            torch._C._set_sm_carveout_experimental(None)
    return loss, gh, gw.to(d["ws"].dtype)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="kd_overlap_probe.json")
    ap.add_argument("--tokens", default="8192,32768")
    ap.add_argument("--chunks", default="1024,2048")
    ap.add_argument("--carveouts", default="", help="comma-separated SM counts to leave free of cuBLAS")
    args = ap.parse_args()
    t0 = time.time()
    report = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "liger": LIGER,
              "matmul_tflops": matmul_tflops(), "cases": [], "checks": []}
    failed = []

    def check(n, cs, name, got, want, tol):
        """The three results' relative errors against the default head's; past ``tol``, a failure."""
        row = {"tokens": n, "chunk": cs, "impl": name, "loss_rel": rel(got[0], want[0]),
               "grad_h_rel": rel(got[1], want[1]), "grad_w_rel": rel(got[2], want[2])}
        report["checks"].append(row)
        if max(row["loss_rel"], row["grad_h_rel"], row["grad_w_rel"]) > tol:
            failed.append(row)

    for n in [int(x) for x in args.tokens.split(",")]:
        d = make_inputs(n, seed=n)
        if LIGER:
            report["cases"].append({"tokens": n, "impl": "liger default", **measure(liger_jsd, d, 3, 15)})
        for cs in [int(x) for x in args.chunks.split(",")]:
            variants = [("potstill default", default_jsd), ("overlapped (2 streams)", overlap_jsd)]
            for co in [int(x) for x in args.carveouts.split(",") if x]:
                variants.append((f"overlapped, {co} SMs free", lambda d, cs, co=co: overlap_jsd(d, cs, co)))
            want = default_jsd(d, cs)
            for name, fn in variants[1:]:
                # Same kernels and order: bitwise; another GEMM algorithm (carve-out) may round differently.
                check(n, cs, name, fn(d, cs), want, 1e-4 if "SMs free" in name else 1e-6)
            del want
            for name, fn in variants:
                r = measure(lambda d, f=fn: f(d, cs), d, 3, 15)
                report["cases"].append({"tokens": n, "impl": name, "chunk": cs, **r})
        del d
        torch.cuda.empty_cache()
    liger = {c["tokens"]: c["ms_median"] for c in report["cases"] if c["impl"] == "liger default" and "ms_median" in c}
    for c in report["cases"]:
        if c["tokens"] in liger and "ms_median" in c:
            c["vs_liger_default"] = liger[c["tokens"]] / c["ms_median"]
    report["wall_s"] = round(time.time() - t0, 1)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)
    print(f"{'tokens':>7} {'impl':<24} {'chunk':>6} {'ms':>8} {'vs liger':>9} {'peak MiB':>9}")
    for c in report["cases"]:
        print(f"{c['tokens']:>7} {c['impl']:<24} {c.get('chunk', ''):>6} {c.get('ms_median', float('nan')):>8.2f} "
              f"{c.get('vs_liger_default', float('nan')):>8.2f}x {c.get('peak_mib', float('nan')):>9.0f} {c['status']}")
    for ch in report["checks"]:
        print("check", ch)
    if failed:
        print(f"CORRECTNESS FAILED: overlapped gradients differ from the default head's: {failed}", file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
