"""GPU benchmark of a full training step: potstill's loss path against plain transformers.

1. SmolLM2-135M-shaped student (random init from its config: H=576, 30 layers, 9/3 heads,
   V=49,152, tied head), bf16 weights, sdpa attention, fused AdamW, next-token loss on every
   token of random full-length sequences:
   - ``hf``: ``model(input_ids, labels=input_ids).loss`` (materialises B x T x V logits);
   - ``hf+compile``: the same model under ``torch.compile`` (whole forward, loss included);
   - ``hf+liger``: the same after ``liger_kernel.transformers.apply_liger_kernel_to_llama``
     (RMSNorm, RoPE, SwiGLU and fused linear cross-entropy: what ``use_liger_kernel=True`` gives
     TRL users); the class-level patch is undone afterwards so later variants stay stock;
   - ``potstill``: the trainer's own loss module (``potstill.train.loss_module.LossModule``): the
     decoder body with the training attention of ``train/attention.py``, then the chunked
     cross-entropy head;
   - ``potstill+compile``: the same with ``train.compile: true`` (the body under ``torch.compile``).
   Every variant gets its batch as the trainer does, a list of examples, and turns it into device
   tensors inside the timed step (potstill: ``collate``; transformers: one padded id tensor, what
   a data collator does). All see the same init and the same batches in the same order, so the
   losses must agree: the first loss (before any update) within ``FIRST_LOSS_RTOL`` and the mean
   of the timed steps' losses within ``CURVE_RTOL`` of ``hf``'s, or the script exits 1
   (``--break-loss`` scales potstill's loss to show that gate failing).
2. End-to-end KD step with a SmolLM2-1.7B-shaped teacher (H=2048, 24 layers, random init, bf16,
   no grad): teacher forward + student forward/backward + optimizer step, JSD(beta=0.5) on every
   token, the trainer's loss module (``fused_linear_kd``) vs the materialised-logits version
   (``losses.generalized_jsd``).

Times: median of ``--reps`` steps after ``--warmup`` steps, each bracketed by CUDA events.
MFU counts 6 * (non-embedding params + head) FLOPs per token plus causal attention
(6 * layers * T * H per token), over a measured bf16 matmul rate and the 989 TFLOP/s datasheet.

    PYTHONPATH=src python benchmarks/train_step.py --out train_step.json
    PYTHONPATH=src python benchmarks/train_step.py --tiny   # CPU smoke run of the same code
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import statistics
import sys
import time

import torch

from potstill.models.scoring import decoder
from potstill.train import losses as L
from potstill.train.batching import IGNORE, Example, collate
from potstill.train.loss_module import LossModule, LossSpec, hidden_states

STUDENT = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
               num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192, rope_theta=100000.0,
               rms_norm_eps=1e-5, tie_word_embeddings=True)
TEACHER = dict(vocab_size=49152, hidden_size=2048, intermediate_size=8192, num_hidden_layers=24,
               num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=8192, rope_theta=130000.0,
               rms_norm_eps=1e-5, tie_word_embeddings=True)
TINY = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True)
DATASHEET_TFLOPS = 989.0  # H100 / H200 SXM dense bf16
FIRST_LOSS_RTOL = 5e-3  # bf16 logits (potstill, Liger) vs hf's fp32-upcast logits: ~1e-3 seen
CURVE_RTOL = 2e-2  # 10+ bf16 Adam steps on random tokens drift apart a little, never by 2%
HF_VARIANTS = ("hf", "hf+compile", "hf+liger")


def build(shape: dict, device: str, dtype: torch.dtype, seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(**shape, attn_implementation="sdpa")
    with torch.device(device):  # initialise on the GPU: a 1.7B model's CPU init alone takes tens of seconds
        return LlamaForCausalLM(cfg).to(dtype=dtype)


def flops_per_token(shape: dict, T: int) -> float:
    H, L_, V, I = shape["hidden_size"], shape["num_hidden_layers"], shape["vocab_size"], shape["intermediate_size"]
    kv = H * shape["num_key_value_heads"] // shape["num_attention_heads"]
    per_layer = H * H * 2 + H * kv * 2 + 3 * H * I  # q, o, k, v, gate/up/down
    return 6 * (L_ * per_layer + V * H) + 6 * L_ * T * H


def hf_loss(model, examples):
    """A data collator's work (one id tensor to the device), then transformers' own loss."""
    ids = torch.tensor([e.ids for e in examples]).to(model.device, non_blocking=True)
    return model(input_ids=ids, labels=ids).loss


def as_examples(ids: torch.Tensor, kd: bool = False) -> list[Example]:
    return [Example(ids=row.tolist(), n_prompt=0, kd_only=kd) for row in ids.cpu()]


def random_batches(vocab: int, B: int, T: int, n: int = 4) -> list[list[Example]]:
    """``n`` batches of B random-token examples of T tokens, the same on every call (seed 1)."""
    g = torch.Generator().manual_seed(1)
    return [as_examples(torch.randint(0, vocab, (B, T), generator=g)) for _ in range(n)]


class liger_patched:
    """``apply_liger_kernel_to_llama`` on ``model``, undone on exit (it patches the classes too)."""

    NAMES = ("apply_rotary_pos_emb", "LlamaRMSNorm", "LlamaMLP")

    def __init__(self, model):
        self.model = model

    def __enter__(self):
        from liger_kernel.transformers import apply_liger_kernel_to_llama
        from transformers.models.llama import modeling_llama as ML

        self.saved = {n: getattr(ML, n) for n in self.NAMES}
        self.forward = ML.LlamaForCausalLM.forward
        apply_liger_kernel_to_llama(model=self.model)
        return self.model

    def __exit__(self, *exc):
        from transformers.models.llama import modeling_llama as ML

        for n, v in self.saved.items():
            setattr(ML, n, v)
        ML.LlamaForCausalLM.forward = self.forward


def loss_module(model, compiled: bool, mode: str | None) -> LossModule:
    """The trainer's loss module; ``mode`` (e.g. reduce-overhead) swaps in a body compiled with it."""
    module = LossModule(model, model, compile=compiled)
    if compiled and mode:
        module._body = torch.compile(decoder(model), mode=mode)
    return module


CE_SPEC = LossSpec("forward_kl", 0.5, 0.0, 1.0, None, True)
JSD_SPEC = LossSpec("jsd", 0.5, 0.0, 1.0, None, True)


def potstill_loss(module, scale: float = 1.0):
    """The trainer's step body: collate the examples on the device, then the loss module."""
    def f(model, examples):
        b = collate(examples, pad=0, device=model.device)
        return module(b, CE_SPEC)["ce"] / b.ids[:, 1:].numel() * scale
    return f


def train_step(model, opt, loss_fn):
    """One optimizer step on a batch; returns the detached loss."""
    def step(batch):
        loss = loss_fn(model, batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()
    return step


def timed_steps(step, batches, warmup, reps, device):
    """Median seconds per step; ``step(batch) -> loss``. Returns (median_s, spread, losses, peak GiB,
    median host seconds). Host seconds: from the step's start until ``step`` returns, before waiting
    for the GPU: the CPU's share (collating, launching kernels). When it is close to the step's
    time, the step is bound by the host CPU, not the GPU."""
    for i in range(warmup):
        step(batches[i % len(batches)])
    sync(device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times, hosts, losses = [], [], []
    for i in range(reps):
        b = batches[(warmup + i) % len(batches)]
        t0 = time.perf_counter()
        if device == "cuda":
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            loss = step(b)
            e.record()
            hosts.append(time.perf_counter() - t0)
            e.synchronize()
            times.append(s.elapsed_time(e) / 1e3)
        else:
            loss = step(b)
            times.append(time.perf_counter() - t0)
            hosts.append(times[-1])
        losses.append(float(loss))
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
    return statistics.median(times), (min(times), max(times)), losses, peak, statistics.median(hosts)


def host_cpu() -> str:
    """The host CPU's model name and core count (steps bound by the host vary with it)."""
    try:
        with open("/proc/cpuinfo") as f:
            name = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "unknown")
    except OSError:
        name = "unknown"
    return f"{name}, {os.cpu_count()} cores"


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def matmul_tflops(device) -> float | None:
    if device != "cuda":
        return None
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    sync(device)
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    s.record()
    for _ in range(20):
        a @ b
    e.record()
    e.synchronize()
    return 2 * 8192**3 * 20 / (s.elapsed_time(e) / 1e3) / 1e12


def _sft_variant(name, model, args):
    """``(loss_fn(model, examples), context manager)`` of one variant."""
    import contextlib

    if name == "hf":
        return hf_loss, contextlib.nullcontext()
    if name == "hf+compile":
        compiled = torch.compile(model, mode=args.compile_mode)
        return (lambda m, ex: hf_loss(compiled, ex)), contextlib.nullcontext()
    if name == "hf+liger":
        return hf_loss, liger_patched(model)
    scale = 1.05 if args.break_loss else 1.0
    return potstill_loss(loss_module(model, name == "potstill+compile", args.compile_mode), scale), \
        contextlib.nullcontext()


def sft_bench(args, device, dt, shape, results, B, names):
    T = args.seq
    data = random_batches(shape["vocab_size"], B, T)
    fpt = flops_per_token(shape, T)
    for name in names:
        if name in args.skip:
            continue
        torch._dynamo.reset()  # each variant compiles afresh for its own static shape
        model = build(shape, device, dt, seed=0).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device == "cuda")
        loss_fn, ctx = _sft_variant(name, model, args)
        try:
            with ctx:
                with torch.no_grad():  # same init + same first batch: the first losses must agree
                    first = float(loss_fn(model, data[0]))
                step = train_step(model, opt, loss_fn)
                t_compile = time.perf_counter()
                med, spread, losses, peak, host = timed_steps(step, data, args.warmup, args.reps, device)
                t_total = time.perf_counter() - t_compile
        except torch.OutOfMemoryError:
            results["sft"].append({"variant": name, "batch": B, "oom": True})
            continue
        except Exception as e:  # a baseline that cannot run here (e.g. Liger missing) is recorded, not fatal
            results["sft"].append({"variant": name, "batch": B, "error": f"{type(e).__name__}: {str(e)[:300]}"})
            print(f"sft B={B} {name}: {type(e).__name__}: {str(e)[:300]}", flush=True)
            continue
        row = {"variant": name, "batch": B, "seq": T, "step_ms": med * 1e3,
               "step_ms_min_max": [spread[0] * 1e3, spread[1] * 1e3], "host_ms": host * 1e3,
               "tokens_per_s": B * T / med, "compile_mode": args.compile_mode, "peak_gib": peak, "first_loss": first,
               "losses": losses, "wall_s_incl_warmup": t_total,
               "model_tflops": fpt * B * T / med / 1e12}
        results["sft"].append(row)
        print(f"sft B={B} {name:18s} {row['step_ms']:8.1f} ms  {row['tokens_per_s']:10.0f} tok/s  peak {peak} GiB  "
              f"first loss {first:.5f}  last {losses[-1]:.5f}", flush=True)
        del model, opt, step
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()


def loss_gate(results) -> list[str]:
    """Every variant's losses against ``hf``'s at the same batch size (same init, same data)."""
    failed = []
    rows = [r for r in results["sft"] if "losses" in r]
    for r in rows:
        ref = next((x for x in rows if x["variant"] == "hf" and x["batch"] == r["batch"]), None)
        if ref is None or r is ref:
            continue
        d_first = abs(r["first_loss"] - ref["first_loss"]) / abs(ref["first_loss"])
        mean = statistics.fmean(r["losses"])
        d_curve = abs(mean - statistics.fmean(ref["losses"])) / abs(statistics.fmean(ref["losses"]))
        r["first_loss_rel_diff_vs_hf"], r["mean_loss_rel_diff_vs_hf"] = d_first, d_curve
        if d_first > FIRST_LOSS_RTOL or d_curve > CURVE_RTOL or not math.isfinite(mean):
            failed.append(f"{r['variant']} B={r['batch']}: first loss differs from hf's by {d_first:.1e} "
                          f"(tolerance {FIRST_LOSS_RTOL:.0e}), mean loss by {d_curve:.1e} (tolerance {CURVE_RTOL:.0e})")
    return failed


def speedups(results) -> list[dict]:
    """Per batch size: the fastest potstill variant against the fastest transformers baseline."""
    out = []
    for B in sorted({r["batch"] for r in results["sft"]}):
        ok = [r for r in results["sft"] if r["batch"] == B and "tokens_per_s" in r]
        base = max((r for r in ok if r["variant"] in HF_VARIANTS), key=lambda r: r["tokens_per_s"], default=None)
        ours = max((r for r in ok if r["variant"].startswith("potstill")), key=lambda r: r["tokens_per_s"],
                   default=None)
        if base and ours:
            out.append({"batch": B, "potstill": ours["variant"], "potstill_tokens_per_s": ours["tokens_per_s"],
                        "best_baseline": base["variant"], "baseline_tokens_per_s": base["tokens_per_s"],
                        "speedup": ours["tokens_per_s"] / base["tokens_per_s"],
                        "potstill_mfu": ours.get("mfu_datasheet"), "baseline_mfu": base.get("mfu_datasheet"),
                        "goal_1_5x_met": ours["tokens_per_s"] / base["tokens_per_s"] >= 1.5})
    return out


def kd_bench(args, device, dt, s_shape, t_shape, results, compiled=False):  # noqa: C901
    B, T = args.kd_batch, args.seq
    g = torch.Generator(device="cpu").manual_seed(2)
    batches = [torch.randint(0, s_shape["vocab_size"], (B, T), generator=g).to(device) for _ in range(4)]
    collated = [as_examples(ids, kd=True) for ids in batches]  # collated inside the step, as the trainer does
    torch._dynamo.reset()
    teacher = build(t_shape, device, dt, seed=1).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    t_body = torch.compile(teacher.model, mode=args.compile_mode) if compiled else teacher.model
    for name in ("potstill_kd", "materialised_kd"):
        if name in args.skip or (compiled and name == "materialised_kd"):
            continue
        student = build(s_shape, device, dt, seed=0).train()
        module = loss_module(student, compiled, args.compile_mode)
        opt = torch.optim.AdamW(student.parameters(), lr=1e-4, fused=device == "cuda")

        def kd_loss(student, examples, name=name, module=module):
            b = collate(examples, pad=0, device=student.device, kd_tokens=True)
            with torch.no_grad():
                if name == "potstill_kd":
                    ht = hidden_states(teacher, t_body, b)[:, :-1]
                else:
                    tl = teacher(input_ids=b.ids).logits
            if name == "potstill_kd":
                return module(b, JSD_SPEC, ht, teacher.lm_head.weight)["kd"] / b.ids[:, 1:].numel()
            sl = student(input_ids=b.ids).logits
            return L.generalized_jsd(sl[:, :-1], tl[:, :-1], beta=0.5)

        step = train_step(student, opt, kd_loss)

        try:
            med, spread, losses, peak, host = timed_steps(step, collated, args.warmup, args.reps, device)
            row = {"variant": name + ("+compile" if compiled else ""), "batch": B, "seq": T, "step_ms": med * 1e3,
                   "step_ms_min_max": [spread[0] * 1e3, spread[1] * 1e3], "host_ms": host * 1e3,
                   "tokens_per_s": B * T / med, "peak_gib": peak, "losses": losses}
            print(f"kd  {name:18s} {row['step_ms']:8.1f} ms  {row['tokens_per_s']:10.0f} tok/s  peak {peak} GiB  "
                  f"first loss {losses[0]:.6f}", flush=True)
        except torch.OutOfMemoryError:
            row = {"variant": name + ("+compile" if compiled else ""), "batch": B, "seq": T, "oom": True}
            print(f"kd  {name}: out of memory", flush=True)
        results["kd"].append(row)
        del student, opt, step
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()


def shapes_check(args, device, dt, shape, results):
    """The compiled trainer path on batches of changing shapes, against transformers' stock sdpa
    path fed the collated mask: right-padded rows of random lengths, then packed rows. Per batch:
    the CE loss and the gradient of every weight, relative differences; and how many graphs
    the compiled body needed (static first, then one dynamic recompile). The step is timed on
    full-length batches before (static graph) and after (dynamic graph). ``--check-layers`` keeps
    compilation short: the attention kernels and masks do not depend on the depth."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    shape = {**shape, "num_hidden_layers": args.check_layers or shape["num_hidden_layers"]}
    model = build(shape, device, dt, seed=0).train()
    module = loss_module(model, True, None)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device == "cuda")
    step = train_step(model, opt, potstill_loss(module))
    hi = args.seq
    data = random_batches(shape["vocab_size"], args.batch, hi)
    timing = {"layers": shape["num_hidden_layers"], "batch": args.batch, "seq": hi}
    med = timed_steps(step, data, args.warmup, args.reps, device)[0]
    timing.update(static_step_ms=med * 1e3, static_graphs=int(counters["stats"]["unique_graphs"]))
    rng = torch.Generator().manual_seed(3)
    rows = []
    for i, pack in enumerate([False, False, False, True, True, False]):
        lengths = torch.randint(hi // 16, hi + 1, (args.check_batch,), generator=rng).tolist()
        ex = [Example(ids=torch.randint(0, shape["vocab_size"], (n,), generator=rng).tolist(), n_prompt=n // 4)
              for n in lengths]
        b = collate(ex, pad=0, device=device, pack=pack, max_length=hi)
        n_ce = int((b.ce_targets != IGNORE).sum())
        grads = []
        for path in ("potstill", "stock"):
            model.zero_grad(set_to_none=True)
            if path == "potstill":
                loss = module(b, CE_SPEC)["ce"] / n_ce
            else:
                h = decoder(model)(input_ids=b.ids, attention_mask=b.attention_mask, position_ids=b.position_ids,
                                   use_cache=False).last_hidden_state
                loss = L.cross_entropy(h[:, :-1] @ model.lm_head.weight.t(), b.ce_targets, reduction="sum") / n_ce
            loss.backward()
            grads.append((loss.item(), torch.cat([p.grad.float().flatten() for p in model.parameters()])))
        (lo, go), (ls, gs) = grads
        row = {"batch": i, "packed": pack, "shape": list(b.ids.shape), "loss_potstill": lo, "loss_stock": ls,
               "loss_rel_diff": abs(lo - ls) / abs(ls), "grad_rel_l2": float((go - gs).norm() / gs.norm()),
               "graphs_so_far": int(counters["stats"]["unique_graphs"])}
        rows.append(row)
        print("check", row, flush=True)
    results["shapes_check"] = rows
    # The body has seen several shapes and is dynamic now: the same full-length batches again.
    med = timed_steps(step, data, args.warmup, args.reps, device)[0]
    timing.update(dynamic_step_ms=med * 1e3, graphs=int(counters["stats"]["unique_graphs"]))
    results["shapes_check_timing"] = timing
    print("static vs dynamic body", timing, flush=True)
    del model, module, opt
    gc.collect()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="train_step.json")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--plan", default="hf:16,hf+liger:16,potstill:16,hf+compile:16,potstill+compile:16,"
                    "hf:32,hf+liger:32,hf+compile:32,potstill+compile:32",
                    help="comma-separated sections: VARIANT:BATCH (hf, hf+compile, hf+liger, potstill, "
                    "potstill+compile), kd, kd+compile, "
                    "check (compiled trainer path vs stock sdpa on padded and packed batches of changing shapes)")
    ap.add_argument("--compile-mode", default=None, help="torch.compile mode (default: inductor's default)")
    ap.add_argument("--kd-batch", type=int, default=8)
    ap.add_argument("--check-batch", type=int, default=8, help="rows per batch of the 'check' section")
    ap.add_argument("--check-layers", type=int, default=4, help="student layers in the 'check' section (0: all)")
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--skip", nargs="*", default=[])
    ap.add_argument("--tiny", action="store_true", help="tiny shapes on CPU: checks the script runs")
    ap.add_argument("--append", action="store_true",
                    help="add to the rows already in --out (one process per variant: no state carried between them)")
    ap.add_argument("--break-loss", action="store_true", help="scale potstill's loss by 1.05: the loss gate must fail")
    args = ap.parse_args()
    device = "cpu" if args.tiny or not torch.cuda.is_available() else "cuda"
    dt = torch.float32 if device == "cpu" else torch.bfloat16
    s_shape, t_shape = (TINY, {**TINY, "hidden_size": 96, "num_attention_heads": 4}) if args.tiny else (STUDENT, TEACHER)
    if args.tiny:
        args.batch, args.kd_batch, args.check_batch, args.seq, args.warmup, args.reps = 2, 2, 3, 64, 1, 2
    results = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "host_cpu": host_cpu(),
               "torch": torch.__version__,
               "transformers": __import__("transformers").__version__, "matmul_tflops": matmul_tflops(device),
               "datasheet_tflops": DATASHEET_TFLOPS, "flops_per_token": flops_per_token(s_shape, args.seq),
               "sft": [], "kd": [], "argv": sys.argv[1:]}
    if args.append and os.path.exists(args.out):
        with open(args.out) as f:
            prev = json.load(f)
        results["sft"], results["kd"] = prev["sft"] + results["sft"], prev["kd"] + results["kd"]
        results["argv"] = prev["argv"] + [sys.argv[1:]]
    print(f"device {results['device']}, bf16 8192^3 matmul {results['matmul_tflops']} TFLOP/s", flush=True)
    def save():  # after every section, so a run cut short still leaves its numbers
        for r in results["sft"]:
            if not r.get("oom") and results["matmul_tflops"]:
                r["mfu_measured_peak"] = r["model_tflops"] / results["matmul_tflops"]
                r["mfu_datasheet"] = r["model_tflops"] / DATASHEET_TFLOPS
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)

    # Cheap sections first; the compiled variants (compilation takes a while) last.
    for item in args.plan.split(","):
        if item == "check":
            shapes_check(args, device, dt, s_shape, results)
        elif item.startswith("kd"):
            kd_bench(args, device, dt, s_shape, t_shape, results, compiled=item == "kd+compile")
        else:
            name, b = item.split(":")
            sft_bench(args, device, dt, s_shape, results, 2 * int(args.tiny) or int(b), [name])
        save()
    failed = loss_gate(results)
    results["speedup"] = speedups(results)
    results["loss_gate_failed"] = failed
    save()
    for r in results["sft"] + results["kd"]:
        print(r["variant"], r.get("batch"), {k: r.get(k) for k in ("tokens_per_s", "peak_gib", "mfu_datasheet",
                                                                   "mfu_measured_peak", "first_loss", "error")})
    for r in results["speedup"]:
        mfu = [f"{x:.1%}" if x is not None else "n/a" for x in (r["potstill_mfu"], r["baseline_mfu"])]
        print(f"B={r['batch']}: {r['potstill']} {r['potstill_tokens_per_s']:.0f} tok/s (MFU {mfu[0]}) vs "
              f"best baseline {r['best_baseline']} {r['baseline_tokens_per_s']:.0f} (MFU {mfu[1]}): "
              f"{r['speedup']:.2f}x; 1.5x goal {'met' if r['goal_1_5x_met'] else 'MISSED'}")
    if failed:
        print("LOSS MATCH FAILED:\n  " + "\n  ".join(failed), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
