"""Probe (issue 17, point 1): how much faster this CPU multiplies int8 than fp32 at the quickstart
student's shapes, which bounds what an int8 engine can gain over the fp32 one at batch 16.

    PYTHONPATH=src:. python benchmarks/int8_peak_probe.py --out benchmarks/int8_peak_probe.json

For one decoder layer of SmolLM2-135M (q, k, v, o: 576 -> 576 / 192 / 192 / 576; gate, up: 576 ->
1,536; down: 1,536 -> 576) and ``--rows`` tokens (656: a packed batch of 16 quickstart queries
after the cached system turn, 41 tokens each on average; and 1), the same products through
``torch.mm`` in fp32 and in bf16, and through ``torch._int_mm`` on int8 (uint8 activations times
int8 weights, as ``potstill.models.int8`` feeds it on a CPU with AVX-512 VNNI and no AMX), in
turns, median of ``--reps`` calls each. Also one 2,048-cube product of each kind, the CPU's
near-peak rate. No quantization, scaling or other work is timed: these are the products alone,
so the int8 / fp32 ratio printed is an upper bound on what int8 layers can gain over fp32 ones.

Correctness (exit 1 past it): the int8 product equals an exact int64 reference on every shape.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from benchmarks.checks import finish

LAYER = [("q", 576, 576), ("k", 576, 192), ("v", 576, 192), ("o", 576, 576),
         ("gate", 576, 1536), ("up", 576, 1536), ("down", 1536, 576)]


def timed(f, reps: int) -> float:
    for _ in range(3):
        f()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def products(m: int, k: int, n: int, reps: int) -> tuple[dict[str, float], bool]:
    """Seconds per product of (m, k) by (k, n) in fp32, bf16 and int8, and whether int8 was exact."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(m, k, generator=g)
    w = torch.randn(k, n, generator=g)
    xb, wb = x.bfloat16(), w.bfloat16()
    xq = torch.randint(0, 256, (m, k), dtype=torch.uint8, generator=g)
    wq = torch.randint(-128, 128, (n, k), dtype=torch.int8, generator=g).t()  # (k, n) as potstill passes it
    exact = bool(torch.equal(torch._int_mm(xq, wq).long(), xq.long() @ wq.long())) if m * k * n <= 2 ** 31 else True
    secs = {"fp32": [], "bf16": [], "int8": []}
    for _ in range(3):  # in turns: a slow moment of the shared VM falls on every kind
        secs["fp32"].append(timed(lambda: torch.mm(x, w), reps))
        secs["bf16"].append(timed(lambda: torch.mm(xb, wb), reps))
        secs["int8"].append(timed(lambda: torch._int_mm(xq, wq), reps))
    return {kind: min(v) for kind, v in secs.items()}, exact


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[656, 1])
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args(argv)
    failures = []
    out: dict = {"machine": {"cpus": torch.get_num_threads(), "torch": torch.__version__,
                             "python": platform.python_version(),
                             "cpu_flags": sorted({f for f in Path("/proc/cpuinfo").read_text().split()
                                                  if f in ("avx512f", "avx512_vnni", "avx512_bf16", "amx_int8",
                                                           "amx_bf16", "amx_tile")})}}
    cube, exact = products(2048, 2048, 2048, max(3, a.reps // 4))
    if not exact:
        failures.append("int8 product of the 2,048 cube differs from the int64 reference")
    macs = 2048 ** 3
    out["cube_2048"] = {k: {"ms": round(s * 1e3, 3), "gmac_per_s": round(macs / s / 1e9, 1)} for k, s in cube.items()}
    out["cube_2048"]["int8_over_fp32"] = round(cube["fp32"] / cube["int8"], 2)
    for m in a.rows:
        per = {}
        total = {"fp32": 0.0, "bf16": 0.0, "int8": 0.0}
        layer_macs = 0
        for name, k, n in LAYER:
            s, exact = products(m, k, n, a.reps)
            if not exact:
                failures.append(f"int8 product {name} at {m} rows differs from the int64 reference")
            per[name] = {kind: round(v * 1e6, 1) for kind, v in s.items()}
            for kind in total:
                total[kind] += s[kind]
            layer_macs += m * k * n
        out[f"layer_rows{m}"] = {
            "us_per_product": per,
            "layer_ms": {k: round(v * 1e3, 3) for k, v in total.items()},
            "gmac_per_s": {k: round(layer_macs / v / 1e9, 1) for k, v in total.items()},
            "int8_over_fp32": round(total["fp32"] / total["int8"], 2),
            "bf16_over_fp32": round(total["fp32"] / total["bf16"], 2)}
        r = out[f"layer_rows{m}"]
        print(f"{m:5d} rows: one layer's products fp32 {r['layer_ms']['fp32']:.3f} ms, bf16 {r['layer_ms']['bf16']:.3f}, "
              f"int8 {r['layer_ms']['int8']:.3f} -> int8 {r['int8_over_fp32']}x fp32 ({r['gmac_per_s']})", flush=True)
    c = out["cube_2048"]
    print(f"2048 cube: fp32 {c['fp32']['gmac_per_s']} / bf16 {c['bf16']['gmac_per_s']} / int8 {c['int8']['gmac_per_s']} "
          f"GMAC/s -> int8 {c['int8_over_fp32']}x fp32", flush=True)
    finish(out, failures, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
