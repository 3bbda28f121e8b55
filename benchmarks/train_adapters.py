"""GPU benchmark of an adapter training step (``train.method: lora`` and ``qlora``): potstill's
loss path, eager and under ``train.compile``, against what a TRL user runs (PEFT on transformers,
eager, under ``torch.compile``, and with Liger's kernels).

The student is SmolLM2-135M-shaped (``train_step.STUDENT``, random init, bf16 weights, sdpa, the
loss under bf16 autocast: potstill's trainer keeps a LoRA base in fp32, which autocast casts to the
same bf16 for each GEMM; here every variant has the bf16 base a TRL user loads); every variant
gets the same adapters from potstill's own ``apply_lora`` (the default ``train`` settings: r 16,
alpha 32, every linear layer but the head), seeded alike, and the same batches of random
full-length sequences, next-token loss on every token, fused AdamW over the adapters:

- ``hf+lora``: the PEFT model's own loss, ``model(input_ids, labels=input_ids).loss``
  (materialises B x T x V logits);
- ``hf+lora+compile``: the same PEFT model under ``torch.compile``;
- ``hf+lora+liger``: the same after ``apply_liger_kernel_to_llama`` on the base (what
  ``use_liger_kernel=True`` gives TRL users: fused linear cross-entropy, RMSNorm, RoPE, SwiGLU);
- ``potstill+lora``, ``potstill+lora+compile``: the trainer's loss module over the PEFT model;
- the ``qlora`` counterparts: the base reloaded in 4-bit NF4 by potstill's ``load_qlora_base``
  (bitsandbytes, bf16 compute, then PEFT's ``prepare_model_for_kbit_training``, as TRL does for a
  4-bit model), the same adapters on top.

Batches are collated inside the timed step, as the trainer does. Every variant's first loss
(before any update) must match its method's ``hf+`` variant within ``FIRST_LOSS_RTOL`` and the
mean of its timed losses within ``CURVE_RTOL``, or the script exits 1 (``--break-loss`` scales
potstill's loss to show that gate failing); a variant that cannot run (bitsandbytes or Liger
missing) makes it exit 2 after saving, since a missing baseline would flatter potstill.

    PYTHONPATH=src:. python benchmarks/train_adapters.py --out train_adapters.json
    PYTHONPATH=src:. python benchmarks/train_adapters.py --tiny   # CPU smoke run (LoRA only)
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from types import SimpleNamespace

import torch

from benchmarks.train_step import (CE_SPEC, CURVE_RTOL, FIRST_LOSS_RTOL, STUDENT, TINY, build, hf_loss, host_cpu,
                                   liger_patched, random_batches, timed_steps, train_step)
from potstill.config import TrainConfig
from potstill.models.scoring import decoder
from potstill.train.batching import collate
from potstill.train.loss_module import LossModule
from potstill.train.params import apply_lora, load_qlora_base

PLAN = ("hf+lora,hf+lora+liger,potstill+lora,hf+lora+compile,potstill+lora+compile,"
        "hf+qlora,hf+qlora+liger,potstill+qlora,hf+qlora+compile,potstill+qlora+compile")


def adapted(name: str, shape: dict, device: str, saved: str | None):
    """The PEFT model of a variant, and its base: LoRA on the bf16 model, or QLoRA on the same
    weights reloaded in 4-bit from ``saved`` (a directory the bf16 model was saved to)."""
    cfg = TrainConfig(method="qlora" if "qlora" in name else "lora")
    if "qlora" in name:
        model_cfg = SimpleNamespace(_name_or_path=saved, num_hidden_layers=shape["num_hidden_layers"])
        base = load_qlora_base(SimpleNamespace(device=torch.device(device), model=SimpleNamespace(config=model_cfg)))
    else:
        base = build(shape, device, torch.bfloat16 if device == "cuda" else torch.float32, seed=0)
    torch.manual_seed(5)  # the adapters' init: the same in every variant
    model = apply_lora(base.train(), cfg)
    return model, model.get_base_model()


def variant(name: str, model, base, scale: float, mode: str | None = None):
    """``(loss_fn(model, examples), context manager)`` of one variant; on a GPU the loss runs under
    bf16 autocast, as potstill's trainer and a Trainer with ``bf16=True`` run it. ``mode``: the
    torch.compile mode of potstill's compiled body (inductor's default where None)."""
    if name.startswith("hf"):
        if name.endswith("+compile"):
            compiled = torch.compile(model)
            fn, ctx = (lambda m, ex: hf_loss(compiled, ex)), contextlib.nullcontext()
        else:
            fn, ctx = hf_loss, (liger_patched(base) if name.endswith("+liger") else contextlib.nullcontext())
    else:
        module = LossModule(model, base, compile=name.endswith("+compile"))
        if module._body is not None and mode is not None:
            module._body = torch.compile(decoder(base), mode=mode)

        def fn(m, examples):
            b = collate(examples, pad=0, device=base.device)
            return module(b, CE_SPEC)["ce"] / b.ids[:, 1:].numel() * scale

        ctx = contextlib.nullcontext()

    def loss(m, examples):
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=base.device.type == "cuda"):
            return fn(m, examples)

    return loss, ctx


def bench(args, device: str, shape: dict, name: str, saved: str | None, results: dict) -> None:
    B, T = args.batch, args.seq
    data = random_batches(shape["vocab_size"], B, T)
    torch._dynamo.reset()
    row: dict = {"variant": name, "batch": B, "seq": T}
    try:
        model, base = adapted(name, shape, device, saved)
        trainable = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(trainable, lr=1e-4, fused=device == "cuda")
        loss_fn, ctx = variant(name, model, base, 1.05 if args.break_loss else 1.0)
        with ctx:
            with torch.no_grad():
                first = float(loss_fn(model, data[0]))
            t0 = time.perf_counter()
            med, spread, losses, peak, host = timed_steps(train_step(model, opt, loss_fn), data, args.warmup,
                                                          args.reps, device)
        row.update(step_ms=med * 1e3, step_ms_min_max=[spread[0] * 1e3, spread[1] * 1e3], host_ms=host * 1e3,
                   tokens_per_s=B * T / med, peak_gib=peak, first_loss=first, losses=losses,
                   trainable_parameters=sum(p.numel() for p in trainable),
                   wall_s_incl_warmup=time.perf_counter() - t0)
        print(f"{name:24s} B={B} {row['step_ms']:8.1f} ms {row['tokens_per_s']:10.0f} tok/s peak {peak} GiB "
              f"first loss {first:.5f} last {losses[-1]:.5f}", flush=True)
    except torch.OutOfMemoryError:
        row["oom"] = True
        print(f"{name}: out of memory", flush=True)
    except Exception as e:  # recorded; main exits 2, since the comparison is then incomplete
        row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
        print(f"{name}: {row['error']}", flush=True)
    results["rows"].append(row)
    with contextlib.suppress(NameError):
        del model, base, opt
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def loss_gate(rows: list[dict]) -> list[str]:
    """Each variant against its method's ``hf+`` variant (same init, adapters and data)."""
    failed = []
    for r in [r for r in rows if "losses" in r]:
        method = "qlora" if "qlora" in r["variant"] else "lora"
        ref = next((x for x in rows if x["variant"] == f"hf+{method}" and "losses" in x), None)
        if ref is None:
            failed.append(f"{r['variant']}: no hf+{method} row to check it against")
            continue
        if r is ref:
            continue
        d_first = abs(r["first_loss"] - ref["first_loss"]) / abs(ref["first_loss"])
        d_curve = abs(statistics.fmean(r["losses"]) - statistics.fmean(ref["losses"])) / abs(statistics.fmean(ref["losses"]))
        r["first_loss_rel_diff"], r["mean_loss_rel_diff"] = d_first, d_curve
        if not (d_first <= FIRST_LOSS_RTOL and d_curve <= CURVE_RTOL):  # a NaN fails too
            failed.append(f"{r['variant']}: first loss differs from hf+{method}'s by {d_first:.1e} (tolerance "
                          f"{FIRST_LOSS_RTOL:.0e}), mean loss by {d_curve:.1e} (tolerance {CURVE_RTOL:.0e})")
    return failed


def speedups(rows: list[dict]) -> list[dict]:
    """Per method: the fastest potstill variant against the fastest transformers one."""
    out = []
    for method in ("lora", "qlora"):
        ok = [r for r in rows if "tokens_per_s" in r and ("qlora" in r["variant"]) == (method == "qlora")]
        base = max((r for r in ok if r["variant"].startswith("hf")), key=lambda r: r["tokens_per_s"], default=None)
        ours = max((r for r in ok if r["variant"].startswith("potstill")), key=lambda r: r["tokens_per_s"],
                   default=None)
        if base and ours:
            out.append({"method": method, "potstill": ours["variant"], "potstill_tokens_per_s": ours["tokens_per_s"],
                        "best_baseline": base["variant"], "baseline_tokens_per_s": base["tokens_per_s"],
                        "speedup": ours["tokens_per_s"] / base["tokens_per_s"]})
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="train_adapters.json")
    ap.add_argument("--plan", default=PLAN, help="comma-separated variants, run in this order")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--tiny", action="store_true", help="tiny shapes on CPU, LoRA only: checks the script runs")
    ap.add_argument("--append", action="store_true", help="add to the rows already in --out")
    ap.add_argument("--break-loss", action="store_true", help="scale potstill's loss by 1.05: the loss gate must fail")
    args = ap.parse_args()
    device = "cpu" if args.tiny or not torch.cuda.is_available() else "cuda"
    shape = TINY if args.tiny else STUDENT
    plan = args.plan.split(",")
    if args.tiny:
        args.batch, args.seq, args.warmup, args.reps = 2, 64, 1, 2
        plan = [v for v in plan if "qlora" not in v and "liger" not in v]
    results = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "host_cpu": host_cpu(),
               "torch": torch.__version__, "transformers": __import__("transformers").__version__,
               "peft": __import__("peft").__version__, "rows": [], "argv": [sys.argv[1:]]}
    with contextlib.suppress(ImportError):
        results["bitsandbytes"] = __import__("bitsandbytes").__version__
    if args.append and os.path.exists(args.out):
        with open(args.out) as f:
            prev = json.load(f)
        results["rows"], results["argv"] = prev["rows"], prev["argv"] + results["argv"]

    def save() -> None:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)

    with tempfile.TemporaryDirectory() as saved:
        if any("qlora" in v for v in plan):  # the bf16 weights the 4-bit variants load
            build(shape, device, torch.bfloat16, seed=0).save_pretrained(saved)
        for name in plan:
            bench(args, device, shape, name, saved, results)
            save()
    failed = loss_gate(results["rows"])
    results["speedup"], results["loss_gate_failed"] = speedups(results["rows"]), failed
    save()
    for r in results["speedup"]:
        print(f"{r['method']}: {r['potstill']} {r['potstill_tokens_per_s']:.0f} tok/s vs best baseline "
              f"{r['best_baseline']} {r['baseline_tokens_per_s']:.0f}: {r['speedup']:.2f}x")
    if failed:
        print("LOSS MATCH FAILED:\n  " + "\n  ".join(failed), file=sys.stderr)
        sys.exit(1)
    missing = [r["variant"] for r in results["rows"] if "error" in r]
    if missing:
        print(f"could not run: {', '.join(missing)} (see their error in {args.out})", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
