"""Which of ``scaled_dot_product_attention``'s backends give the right answer on this GPU, for a
model's attention geometry (query heads, key/value heads, head size), the way transformers calls
it: GQA through ``enable_gqa`` without a mask (prefill, a dynamic cache), the key/value heads
repeated with an explicit mask (a static cache, padding), one query row (a decode step), and a few
rows after a cache with a mask (drafts checked in one forward).

    PYTHONPATH=src:. python benchmarks/sdpa_probe.py --heads 9 --kv-heads 3 --head-dim 64 --out sdpa_probe.json

Each backend's output (bf16) against the same inputs in float64 (the reference, on the CPU):
the largest error over the output's largest value. bf16 rounding alone gives about 1e-2; a
wrong kernel gives order 1. Exits 1 when the default dispatch (what transformers gets) is wrong
anywhere, after writing the JSON; a backend that cannot take a shape is recorded as such.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

TOL = 0.05  # relative to the output's largest value; bf16 alone stays near 1e-2
LENGTHS = (16, 64, 100, 192, 223, 256, 287, 320, 512, 1024)


def reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """float64 attention on the CPU: keys and values repeated to the query heads, ``mask`` boolean
    (True attends) over (query, key), bottom-right aligned as transformers builds it."""
    q, k, v = (x.detach().double().cpu() for x in (q, k, v))
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    s = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
    if mask is not None:
        s = s.masked_fill(~mask.cpu(), float("-inf"))
    return torch.softmax(s, -1) @ v


def causal(Lq: int, Lk: int, device: Any) -> torch.Tensor:
    return torch.arange(Lk, device=device)[None, :] <= torch.arange(Lq, device=device)[:, None] + (Lk - Lq)


def cases(H: int, Hkv: int, D: int, device: Any, dtype: torch.dtype) -> list[dict]:
    """The three calls transformers makes, at each length."""
    g = torch.Generator(device="cpu").manual_seed(0)
    out = []
    for L in LENGTHS:
        q = torch.randn(1, H, L, D, generator=g)
        k = torch.randn(1, Hkv, L, D, generator=g) * 2  # keys larger than queries, as in trained models
        v = torch.randn(1, Hkv, L, D, generator=g)
        q, k, v = (x.to(device, dtype) for x in (q, k, v))
        rep = H // Hkv
        kr, vr = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
        m = causal(L, L, device)
        out.append({"call": "prefill, enable_gqa, is_causal", "L": L, "args": (q, k, v),
                    "kw": {"is_causal": True, "enable_gqa": Hkv != H}, "mask": m})
        out.append({"call": "prefill, repeated kv, bool mask", "L": L, "args": (q, kr, vr),
                    "kw": {"attn_mask": m[None, None]}, "mask": m})
        out.append({"call": "decode, one row, enable_gqa", "L": L, "args": (q[:, :, -1:], k, v),
                    "kw": {"enable_gqa": Hkv != H}, "mask": None})
        for n in (2, 3, 9):  # a few rows after a cache (drafts checked in one forward), masked
            out.append({"call": f"{n} rows after a cache, repeated kv, bool mask", "L": L,
                        "args": (q[:, :, -n:], kr, vr), "kw": {"attn_mask": m[-n:][None, None]}, "mask": m})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--heads", type=int, default=9)
    ap.add_argument("--kv-heads", type=int, default=3)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--out")
    a = ap.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16
    backends = {"default": None, "cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
                "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}
    result: dict[str, Any] = {
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "torch": torch.__version__,
        "cudnn": torch.backends.cudnn.version(), "geometry": {"heads": a.heads, "kv_heads": a.kv_heads,
                                                              "head_dim": a.head_dim},
        "dtype": str(dtype), "tolerance": TOL, "rows": [],
    }
    failures = []
    for c in cases(a.heads, a.kv_heads, a.head_dim, device, dtype):
        q, k, v = c["args"]
        m = c["mask"]
        ref = reference(q, k, v, None if m is None else m[-q.shape[2]:])
        row: dict[str, Any] = {"call": c["call"], "L": c["L"]}
        try:
            pick = torch._fused_sdp_choice(q, k, v, **c["kw"])
            row["default_picks"] = SDPBackend(pick).name
        except Exception as e:  # noqa: BLE001 - recorded, not fatal
            row["default_picks"] = f"? ({type(e).__name__})"
        for name, b in backends.items():
            try:
                with torch.inference_mode(), (sdpa_kernel([b]) if b is not None else contextlib.nullcontext()):
                    o = F.scaled_dot_product_attention(q, k, v, **c["kw"])
                err = float((o.double().cpu() - ref).abs().max() / ref.abs().max())
                row[name] = round(err, 5)
            except RuntimeError as e:
                row[name] = f"unavailable ({str(e).splitlines()[0][:60]})"
        result["rows"].append(row)
        d = row["default"]
        if not isinstance(d, float) or d > TOL:
            failures.append(f"{c['call']} at L={c['L']}: default dispatch ({row['default_picks']}) error {d}")
        print(json.dumps(row), flush=True)
    return finish(result, failures, a.out)


def finish(result: dict, failures: list[str], out: str | None) -> int:
    """The probes' ending: the failures into the JSON, the JSON written, each failure on stderr,
    and the exit status (1 past a tolerance). Torch-only, as the probes are, for a bare GPU image."""
    result["failures"] = failures
    if out:
        with open(out, "w") as f:
            json.dump(result, f, indent=1)
    for line in failures:
        print("FAIL", line, file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
