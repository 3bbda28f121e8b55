"""Peak GPU memory and tokens/s of potstill's trainer with gradient accumulation and activation
checkpointing, through ``potstill.train.trainer.train`` itself (collate, loss module, chunked CE
head, AdamW, metrics.jsonl), one variant after another in one process.

Student: SmolLM2-135M's shape (H=576, 30 layers, 9/3 heads, V=49,152, tied head), random init,
with the tests' word-level tokenizer (one token per word, so an example's length is its word
count). Data: ``--examples`` random-word prompts of ``--prompt-words`` words and answers of
``--answer-words``: SFT on the answers, ``--batch`` examples a step, ``student.max_length`` 1,024,
``--steps`` optimiser steps per variant (lr 1e-4, bf16 autocast on a GPU, as ``train`` runs;
``--compile``: ``train.compile``, every micro-batch the same shape, so one graph).

Variants: ``plain``; ``accumN`` (``train.grad_accum_steps N``); ``ckpt``
(``train.gradient_checkpointing``); ``ckpt+accumN``. Peak is ``torch.cuda.max_memory_allocated``
over the whole ``train()`` call (weights, fp32 AdamW state and gradients included: about 2.2 GB
for 135M parameters). tokens/s is taken from metrics.jsonl's ``elapsed_s`` after the first
``--skip`` steps (the first steps pay for allocations and autotuning).

Correctness (exit 1 past it): every variant sees the same batches from the same init, so its first
loss must be within ``--first-rtol`` of ``plain``'s and its mean loss over the steps within
``--curve-rtol`` (bf16 sums in another order drift a little; a wrong normalisation of accumulated
micro-batches moves the loss by a factor of N). ``--curve-rtol 0`` shows the gate failing.

    PYTHONPATH=src:. python benchmarks/train_memory.py --out benchmarks/train_memory.json
    PYTHONPATH=src:. python benchmarks/train_memory.py --compile --variants plain,accum4,ckpt,ckpt+accum4 \
        --out benchmarks/train_memory_compiled.json
    PYTHONPATH=src:. python benchmarks/train_memory.py --tiny   # CPU smoke run of the same code
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from potstill.config import TaskConfig, TrainConfig
from potstill.models.loading import load_lm
from potstill.records import Record
from potstill.students import student_format
from potstill.tasks import get_task
from potstill.train.trainer import train
from tests.helpers.tiny import WORDS, make_tokenizer

STUDENT = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
               num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192, rope_theta=100000.0,
               rms_norm_eps=1e-5, tie_word_embeddings=True)
TINY = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=2048, tie_word_embeddings=True)


def build(shape: dict, out: Path) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = make_tokenizer()
    torch.manual_seed(0)
    cfg = LlamaConfig(**shape, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=None)
    LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def records(n: int, prompt_words: int, answer_words: int, seed: int = 0) -> list[Record]:
    rng = random.Random(seed)

    def text(k: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(k))

    return [Record(messages=[{"role": "user", "content": text(prompt_words)}], output=text(answer_words), valid=True)
            for _ in range(n)]


def variant(name: str) -> dict:
    out: dict = {}
    for part in name.split("+"):
        if part == "ckpt":
            out["gradient_checkpointing"] = True
        elif part.startswith("accum"):
            out["grad_accum_steps"] = int(part[5:])
        elif part != "plain":
            raise SystemExit(f"unknown variant part {part!r} in {name!r}")
    return out


def run_variant(model_dir: Path, data: list[Record], name: str, args, work: Path) -> dict:
    task = get_task(TaskConfig(type="freetext", instruction="summary"))
    lm = load_lm(str(model_dir), device=args.device)
    cfg = TrainConfig(lr=1e-4, batch_size=args.batch, epochs=args.steps * args.batch / len(data), seed=0,
                      int8_calibration=0, device=args.device, compile=args.compile, **variant(name))
    cuda = lm.device.type == "cuda"
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    t0 = time.perf_counter()
    summary = train(lm, student_format(lm, task), task, data, [], cfg, 1024, work / name / "student",
                    work / name / "metrics.jsonl")
    wall = time.perf_counter() - t0
    rows = [json.loads(x) for x in (work / name / "metrics.jsonl").read_text().splitlines()]
    timed = rows[args.skip - 1:] if args.skip else rows
    toks = timed[-1]["tokens"] - (timed[0]["tokens"] if args.skip else 0)
    secs = timed[-1]["elapsed_s"] - (timed[0]["elapsed_s"] if args.skip else 0)
    out = {"settings": variant(name), "steps": summary["steps"], "tokens_per_step": rows[0]["tokens"],
           "tokens_per_s": toks / secs if secs else None, "step_ms": 1e3 * secs / max(1, len(timed) - 1) if args.skip
           else 1e3 * secs / len(timed), "train_call_s": round(wall, 2),
           "losses": [r["loss"] for r in rows], "first_loss": rows[0]["loss"],
           "mean_loss": statistics.fmean(r["loss"] for r in rows)}
    if cuda:
        out["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
        out["peak_over_start_gib"] = round((torch.cuda.max_memory_allocated() - before) / 2**30, 3)
    del lm
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variants", default="plain,accum2,accum4,ckpt,ckpt+accum4")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--skip", type=int, default=3, help="steps left out of tokens/s")
    ap.add_argument("--examples", type=int, default=384)
    ap.add_argument("--prompt-words", type=int, default=900)
    ap.add_argument("--answer-words", type=int, default=100)
    ap.add_argument("--first-rtol", type=float, default=5e-3)
    ap.add_argument("--curve-rtol", type=float, default=2e-2)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--compile", action="store_true", help="train.compile (the first --skip steps compile)")
    ap.add_argument("--tiny", action="store_true", help="a 2-layer model on the CPU, short examples")
    ap.add_argument("--out")
    args = ap.parse_args()
    if args.tiny:
        args.batch, args.steps, args.skip, args.examples = 4, 4, 1, 16
        args.prompt_words, args.answer_words, args.device = 60, 10, "cpu"
    names = args.variants.split(",")
    if names[0] != "plain":
        raise SystemExit("the first variant must be plain (the reference)")
    result: dict = {"args": vars(args), "torch": torch.__version__,
                    "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() and args.device != "cpu" else None,
                    "variants": {}, "failures": []}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model_dir = build(TINY if args.tiny else STUDENT, work / "model")
        data = records(args.examples, args.prompt_words, args.answer_words)
        for name in names:
            r = run_variant(model_dir, data, name, args, work)
            result["variants"][name] = r
            print(json.dumps({name: {k: v for k, v in r.items() if k != "losses"}}), flush=True)
    ref = result["variants"]["plain"]
    for name, r in result["variants"].items():
        first = abs(r["first_loss"] - ref["first_loss"]) / abs(ref["first_loss"])
        curve = abs(r["mean_loss"] - ref["mean_loss"]) / abs(ref["mean_loss"])
        r["first_loss_rel_diff"], r["mean_loss_rel_diff"] = first, curve
        if first > args.first_rtol or curve > args.curve_rtol:
            result["failures"].append(f"{name}: first loss {first:.2e} / mean loss {curve:.2e} relative to plain's "
                                      f"(tolerances {args.first_rtol:g} / {args.curve_rtol:g})")
        if "peak_gib" in r:
            r["peak_vs_plain"] = r["peak_gib"] / ref["peak_gib"]
        if r["tokens_per_s"] and ref["tokens_per_s"]:
            r["speed_vs_plain"] = r["tokens_per_s"] / ref["tokens_per_s"]
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    for f in result["failures"]:
        print("FAIL", f, file=sys.stderr)
    return 1 if result["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
