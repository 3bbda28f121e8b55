"""Where a KD training step's time goes on one GPU, by per-GPU batch size: what the 2-GPU runs inherit.

The trainer's own pieces (``potstill.train``: ``KDTeacher``, ``LossModule``, ``collate``,
fused AdamW, bf16 autocast over fp32 weights, as ``train`` runs them) on the models and text that
``benchmarks/multi_gpu.py prepare`` writes (a SmolLM2-135M-shaped student, a 1.7B-shaped teacher,
BBC articles as right-padded rows of up to 1,024 tokens, or packed rows with ``--pack``). Per batch
size, each part of the step bracketed by CUDA events (the host clock on a CPU), median of ``--reps``
steps after ``--warmup``:

- ``teacher``: the teacher's forward (no grad) to its last hidden states;
- ``student``: the student's forward, the fused KD + CE head and the backward;
- ``optimizer``: the grad-norm (as the trainer logs it), AdamW and zeroing the gradients.

It also reports the gradient bytes one data-parallel step all-reduces and how many buckets DDP's
default 25 MiB cap makes of them. Several batch sizes in one process show how tokens/s change
with the per-GPU batch: two GPUs at a global batch of 32 run 16 each, so the single-GPU rate at
16 against 32 bounds 2-GPU scaling before any communication.

Correctness (exit 1 past tolerance): with ``--compile``, the compiled bf16 teacher's last hidden
states on the first batch are no further from an fp32 copy's than ``HIDDEN_FACTOR`` times the eager
bf16 forward's (relative L2; the two bf16 paths differ from each other by about as much as each
differs from fp32), and every timed step's loss is finite. ``--break-teacher`` shows the first check failing.

    PYTHONPATH=src:. python benchmarks/kd_step_parts.py --dir /tmp/mg --batch 8,16,32 --compile --out kd_step_parts.json
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

HIDDEN_FACTOR = 1.5  # compiled bf16 teacher's error against fp32 may be at most this times eager bf16's
DDP_BUCKET_MB = 25


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True, help="a benchmarks/multi_gpu.py prepare directory")
    ap.add_argument("--batch", default="8,16,32")
    ap.add_argument("--max-length", type=int, default=1024)
    ap.add_argument("--compile", action="store_true", help="train.compile: student body and teacher forward")
    ap.add_argument("--pack", action="store_true", help="train.pack: examples end to end in rows of --max-length")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--reps", type=int, default=8)
    ap.add_argument("--out", default="kd_step_parts.json")
    ap.add_argument("--break-teacher", action="store_true",
                    help="scale the compiled teacher's hidden states by 1.1: the fp32 check must fail")
    args = ap.parse_args()

    from potstill.config import TaskConfig, TrainConfig
    from potstill.models.loading import load_lm
    from potstill.records import Record
    from potstill.students import student_format
    from potstill.tasks import get_task
    from potstill.train.batching import build_examples, collate
    from potstill.train.loss_module import LossModule, LossSpec, combine
    from potstill.train.teacher import KDTeacher

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    root = Path(args.dir)
    sizes = [int(x) for x in args.batch.split(",")]
    rows = [json.loads(x) for x in (root / "data.jsonl").read_text().splitlines()][: max(sizes) * 4]
    records = [Record(messages=[{"role": "user", "content": r["prompt"]}], output=r["completion"], valid=True)
               for r in rows]
    task = get_task(TaskConfig(type="freetext", instruction="Continue the BBC News article."))
    cfg = TrainConfig(objective="kd", kd_signal="logits", teacher_model=str(root / "teacher"), kd_kind="jsd",
                      kd_beta=0.5, compile=args.compile)
    lm = load_lm(str(root / "student"), device=str(dev))
    examples = build_examples(lm, student_format(lm, task), task, records, args.max_length)
    teacher = KDTeacher(cfg.teacher_model, lm, dev, compile=args.compile)
    model = lm.model.float().train()
    module = LossModule(model, model, compile=args.compile)
    spec = LossSpec("jsd", 0.5, 0.0, 1.0, None, True)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=dev.type == "cuda")
    pad = lm.tokenizer.pad_token_id
    amp = dict(device_type=dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda")
    failed: list[str] = []

    grad_bytes = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    out: dict = {"device": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu", "torch": torch.__version__,
                 "compile": args.compile, "pack": args.pack, "max_length": args.max_length,
                 "student_parameters": sum(p.numel() for p in model.parameters()),
                 "teacher_parameters": sum(p.numel() for p in teacher.lm.model.parameters()),
                 "grad_bytes_per_step": grad_bytes,
                 "ddp_buckets_at_25_mib": math.ceil(grad_bytes / (DDP_BUCKET_MB * 2**20)), "batches": []}

    if args.compile:  # the compiled teacher and its eager forward, each against an fp32 copy, first batch
        import copy

        from potstill.models.scoring import decoder
        from potstill.train.loss_module import hidden_states

        b = collate(examples[: sizes[0]], pad, dev, kd_tokens=True)
        keep = b.attention_mask[:, 1:].bool() if b.attention_mask is not None else None
        with torch.no_grad():
            got = teacher.hidden(b).float() * (1.1 if args.break_teacher else 1.0)
            eager = hidden_states(teacher.lm.model, decoder(teacher.lm.model), b)[:, :-1].float()
            m32 = copy.deepcopy(teacher.lm.model).float()
            ref = hidden_states(m32, decoder(m32), b)[:, :-1].float()
            del m32

        def err(x):
            x, r = (x[keep], ref[keep]) if keep is not None else (x, ref)
            return float((x - r).norm() / r.norm())

        e_comp, e_eager = err(got), err(eager)
        out["teacher_hidden_rel_l2_vs_fp32"] = {"compiled": e_comp, "eager": e_eager}
        print(f"teacher hidden states vs an fp32 forward (relative L2): compiled {e_comp:.2e}, "
              f"eager {e_eager:.2e}", flush=True)
        if not e_comp <= HIDDEN_FACTOR * e_eager + 1e-3:
            failed.append(f"the compiled teacher's hidden states are {e_comp:.2e} from fp32's, the eager "
                          f"forward's {e_eager:.2e} (tolerance {HIDDEN_FACTOR}x)")

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def mark():  # a CUDA event on the GPU (no wait inside the step); the host clock on a CPU
        if dev.type == "cuda":
            e = torch.cuda.Event(enable_timing=True)
            e.record()
            return e
        return time.perf_counter()

    def elapsed_ms(a, b) -> float:
        return a.elapsed_time(b) if dev.type == "cuda" else (b - a) * 1e3

    for B in sizes:
        groups = [examples[i * B:(i + 1) * B] for i in range(4)]
        batches = [collate(g, pad, dev, kd_tokens=True, pack=args.pack, max_length=args.max_length) for g in groups]
        parts: dict[str, list[float]] = {"teacher": [], "student": [], "optimizer": [], "step": []}
        losses = []
        for i in range(args.warmup + args.reps):
            b = batches[i % 4]
            marks = [mark()]
            th = teacher.hidden(b)
            marks.append(mark())
            with torch.autocast(**amp):
                sums = module(b, spec, th, teacher.w)
                counts = {k: float(v) for k, v in b.counts().items()}
                loss, _ = combine(sums, counts, cfg)
            loss.backward()
            marks.append(mark())
            torch.nn.utils.clip_grad_norm_(model.parameters(), float("inf"))
            opt.step()
            opt.zero_grad(set_to_none=True)
            marks.append(mark())
            sync()
            if i >= args.warmup:
                t, s_, o = (elapsed_ms(marks[j], marks[j + 1]) for j in range(3))
                for k, v in (("teacher", t), ("student", s_), ("optimizer", o), ("step", t + s_ + o)):
                    parts[k].append(v)
                losses.append(float(loss.detach()))
        tokens = [sum(len(e.ids) for e in g) for g in groups]  # real tokens, not padding
        med = {k: statistics.median(v) for k, v in parts.items()} if parts["step"] else {}
        row = {"batch": B, "tokens_per_batch_mean": statistics.fmean(tokens), "shape_first": list(batches[0].ids.shape),
               "ms": med, "losses": losses}
        if med:
            row["teacher_share"] = med["teacher"] / med["step"]
            row["tokens_per_s"] = statistics.fmean(tokens) / (med["step"] / 1e3)
        if not all(math.isfinite(x) for x in losses):
            failed.append(f"B={B}: a loss is not finite: {losses}")
        out["batches"].append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "losses"}), flush=True)
    by_b = {r["batch"]: r.get("tokens_per_s") for r in out["batches"]}
    if all(by_b.get(b) for b in (16, 32)):
        out["two_gpu_scaling_bound_at_global_32"] = by_b[16] / by_b[32]
        print(f"tokens/s at 16 per GPU / at 32: {out['two_gpu_scaling_bound_at_global_32']:.3f} "
              "(the best 2-GPU efficiency at a global batch of 32, before communication)")
    out["check_failed"] = failed
    Path(args.out).write_text(json.dumps(out, indent=1))
    if failed:
        print("CHECK FAILED:\n  " + "\n  ".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
