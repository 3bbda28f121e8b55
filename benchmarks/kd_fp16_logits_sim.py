"""Would fp16 logits keep the KD head's gradient within issue 19's 0.5%? A CPU simulation.

    PYTHONPATH=src python benchmarks/kd_fp16_logits_sim.py [--out benchmarks/kd_fp16_logits_sim.json]

The lever it weighs: the KD head's GEMMs could write fp16 logits (bf16 inputs cast to fp16, fp32
accumulation, a 2-byte output), halving the bytes its row kernel reads and its GEMM epilogues write,
and fitting 4,096-row blocks in today's memory (benchmarks/KD_HEAD.md bounds the fp32-logit design
at about 2.9x Liger at 32,768 tokens). fp16 carries 11 significant bits against bf16's 8 and fp32's
24. Before spending GPU time on kernels, this measures the precision alone: the logits are computed
exactly (float64) from bf16 inputs shaped as ``kd_head.py`` makes them (student H 576, teacher H
2,048, V 49,152, logits of std ~3), rounded to fp32 / fp16 / bf16, and the JSD (beta 0.5) loss and
gradients taken in float64 from the rounded logits, the gradient stored in bf16 as the head stores
it, against the same from exact logits. Cases: a random teacher, and one close to the student
(``kd_head.close_teacher``'s construction, eps 0.05: late training, where the gradient is a small
difference of two distributions). A GPU GEMM adds its own accumulation error on top of these.

Exits 1 if the fp32 rows exceed the 0.5% tolerance (the simulation itself would then be wrong).
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from potstill.train import losses as L

HS, HT, V, BETA, EPS = 576, 2048, 49152, 0.5, 0.05
TOLERANCE = 5e-3


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=1024)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    t0 = time.time()
    torch.manual_seed(0)
    n, dt = args.tokens, torch.bfloat16
    hs = torch.randn(n, HS).to(dt)
    ws = (torch.randn(V, HS) * 3 / HS**0.5).to(dt)
    ht = torch.randn(n, HT).to(dt)
    wt = (torch.randn(V, HT) * 3 / HT**0.5).to(dt)
    r = torch.randn(n, HT - HS).to(dt)
    R = (torch.randn(V, HT - HS) * 3 * EPS / (HT - HS) ** 0.5).to(dt)
    cases = {"random teacher": (ht, wt), "close teacher": (torch.cat([hs, r], 1), torch.cat([ws, R], 1))}
    s64 = hs.double() @ ws.double().T

    def grads(s: torch.Tensor, t: torch.Tensor) -> tuple[float, torch.Tensor, torch.Tensor]:
        s = s.double().clone().requires_grad_()
        loss = L.generalized_jsd(s, t.double(), beta=BETA)
        loss.backward()
        g = s.grad.to(dt).double()  # dlogits as the head stores them
        return loss.item(), g @ ws.double(), g.T @ hs.double()

    out: dict = {"machine": platform.processor() or platform.machine(), "torch": torch.__version__, "tokens": n,
                 "shapes": {"student_hidden": HS, "teacher_hidden": HT, "vocab": V}, "beta": BETA, "eps": EPS,
                 "tolerance": TOLERANCE, "cases": {}}
    failed = []
    for case, (h_t, w_t) in cases.items():
        t64 = h_t.double() @ w_t.double().T
        ref = grads(s64, t64)
        rows = {}
        for name, d in (("fp32", torch.float32), ("fp16", torch.float16), ("bf16", torch.bfloat16)):
            loss, gh, gw = grads(s64.to(d), t64.to(d))
            rows[name] = {"loss_rel_err": abs(loss - ref[0]) / abs(ref[0]), "grad_hidden_rel_err": rel(gh, ref[1]),
                          "grad_weight_rel_err": rel(gw, ref[2])}
            print(f"{case:15s} {name}: loss {rows[name]['loss_rel_err']:.1e}, grad hidden "
                  f"{rows[name]['grad_hidden_rel_err']:.2%}, grad weight {rows[name]['grad_weight_rel_err']:.2%}",
                  flush=True)
        out["cases"][case] = rows
        if max(rows["fp32"]["grad_hidden_rel_err"], rows["fp32"]["grad_weight_rel_err"]) > TOLERANCE:
            failed.append(f"{case}: fp32 logits past the tolerance (the simulation is wrong)")
        del t64
    worst16 = max(max(c["fp16"]["grad_hidden_rel_err"], c["fp16"]["grad_weight_rel_err"]) for c in out["cases"].values())
    out["fp16_within_tolerance"] = worst16 <= TOLERANCE
    out["seconds"] = round(time.time() - t0, 1)
    out["failed"] = failed
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1)
    print("fp16 logits within the 0.5% tolerance:", out["fp16_within_tolerance"], f"(worst {worst16:.2%})")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
