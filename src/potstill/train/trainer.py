"""Fine-tune the student on teacher outputs: SFT on completions, plus KD from one of three signals.

Objectives (``TrainConfig``): cross-entropy on the teacher's completion tokens, plus, with
``objective: kd``, a divergence to the teacher's distribution taken from label probabilities
(classification, any tokenizer), API top-k log-probabilities (sparse, with a tail bucket), or a
local same-tokenizer teacher's full logits computed on the fly; a fraction ``onpolicy_fraction``
of batches can be the student's own samples scored by that teacher (GKD, see ``onpolicy.py``).

Memory: the CE and token-level KD terms go through the chunked heads of ``fused_head.py``: the
logits exist one block of rows at a time, never as batch x sequence x vocabulary (at B=16,
T=1024, V=49,152 that tensor would be 805M floats, 3.2 GB in fp32, 6.4 GB with its gradient).

Speed on CPU: with ``trainable_layers=N`` only the top N transformer layers get gradients, and
autograd records nothing below them, so the bottom of the network costs one forward pass.

Several processes (``accelerate launch`` / ``torchrun``): each takes every world-th example of
the global batch of ``batch_size``; every loss term is a sum divided by its *global* count (all
processes' tokens), times the world size because DDP averages gradients, so the update equals a
single process's at the same global batch whatever the per-process token counts
(``tests/train/test_distributed.py``). All weight use happens inside one module's forward
(``loss_module.LossModule``), which is what DDP and FSDP need to see.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from rich.markup import escape

from potstill.config import TrainConfig
from potstill.engines.base import model_positions
from potstill.errors import PotstillError, compile_failed
from potstill.hashing import hash_obj
from potstill.models.loading import ADAPTER_LAYERS, LM, hub_revision, hub_split, save_lm
from potstill.models.logit_scale import logit_scale
from potstill.models.prompting import PromptFormat, label_token_ids, stop_token_ids
from potstill.progress import bar, say
from potstill.records import Record, atomic_dir, write_json, write_text
from potstill.tasks import Task
from potstill.train import checkpoint
from potstill.train.batching import Batch, Example, build_examples, collate
from potstill.train.cuts import say_cut_prompts, without_cut_answers
from potstill.train.distributed import (accelerator, check_same_weights, deal, gather_objects, global_counts,
                                        global_values)
from potstill.train.loss_module import TERMS, LossModule, LossSpec, combine, evaluate_val, fused_head_ok
from potstill.train.onpolicy import sample_batch
from potstill.train.params import apply_lora, freeze_for, load_qlora_base
from potstill.train.teacher import KDTeacher, resolve_signal


@dataclass
class _Setup:
    """The prepared student, optimiser and data of one training call."""
    accel: Any
    module: Any
    opt: Any
    sched: Any
    base: Any
    spec: LossSpec
    teacher: KDTeacher | None
    signal: str | None
    examples: list[Example]
    val_examples: list[Example]
    n_trainable: int
    total: int
    cpu_bf16: bool = False  # bf16 autocast in the step on a CPU (train.dtype bfloat16)


@dataclass
class _Progress:
    """Where the step loop starts (0, or a checkpoint's step) and what it carries from step to step."""
    start: int
    order: list[int]
    rng: random.Random
    tokens: int
    elapsed0: float
    kept: list[str]
    last_loss: float | None
    fingerprint: str
    ckpt_dir: Path
    done: int = 0  # optimiser steps finished, for the message when interrupted
    val: dict[str, float] | None = None  # the latest eval_every measurement (evaluate_val)
    best_step: int | None = None  # train.keep_best: the step of the lowest val loss so far, its measurement,
    best_val: dict[str, float] | None = None  # and its trainable weights (main process; None while it is the last step)
    best_state: dict[str, torch.Tensor] | None = None
    stale: int = 0  # train.early_stopping_patience: measurements in a row not better than es_best
    es_best: float | None = None
    stopped_at: int | None = None  # the step early stopping ended the run at
    finished: dict[str, Any] | None = None  # the summary of this training, already saved to out_dir (resume)


def _no_better(p: _Progress, val_loss: float, cfg: TrainConfig) -> bool:
    """Early stopping's count, one val measurement at a time: True once ``early_stopping_patience``
    measurements in a row have not beaten the lowest so far by more than the threshold."""
    if p.es_best is None or val_loss < p.es_best - cfg.early_stopping_threshold:
        p.es_best, p.stale = val_loss, 0
    else:
        p.stale += 1
    return p.stale >= cfg.early_stopping_patience


def train(lm: LM, fmt: PromptFormat, task: Task, records: list[Record], val: list[Record], cfg: TrainConfig,
          max_length: int, out_dir: Path, metrics_path: Path,
          on_row: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Train ``lm`` in place on ``records``; save weights (or the LoRA adapter) to ``out_dir``.

    With ``checkpoint_every`` a resumable checkpoint goes to ``<out_dir>.ckpt/``; a later call with
    the same settings and data resumes from it (``resume``) and reproduces the same loss curve.
    Once the student is saved, that directory holds ``final.json`` instead, whatever
    ``checkpoint_every``: the caller removes it (``checkpoint.drop``) once its own outputs (a
    calibration, train.json) are whole. Until then a call with the same settings and data returns
    the saved training's summary, ``resumed_from_step`` its last step, without training again; the
    student is the one in ``out_dir`` then, and ``lm`` keeps the weights it was loaded with.
    ``on_row``: called in the main process with each metrics.jsonl row once it is written (on a
    resume, first with the rows kept from the checkpoint), e.g. to follow the run in a tracker."""
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    s = _setup(lm, fmt, task, records, val, cfg, max_length)
    p = _resume(s, lm, cfg, max_length, out_dir, metrics_path)
    if p.finished is not None:
        s.accel.unwrap_model(s.module).model.eval()
        if cfg.gradient_checkpointing:
            _activation_checkpointing(s.base, False)
        if s.accel.is_main_process and on_row:  # the whole curve, as a resume from a step checkpoint hands it
            for ln in filter(None, metrics_path.read_text(encoding="utf-8").splitlines()):
                on_row(json.loads(ln))
        return {**p.finished, "resumed_from_step": p.finished["steps"]}
    try:
        train_s = _step_loop(s, p, lm, cfg, max_length, metrics_path, on_row)
        # With eval_every it was measured after the last step already (the same weights).
        val = p.val if cfg.eval_every else _val(s, lm, cfg, max_length)
    except torch._dynamo.exc.BackendCompilerFailed as e:  # inductor's failures (no C++ compiler, ...) are pages long
        raise compile_failed("train", e) from None
    if cfg.keep_best and s.accel.is_main_process:
        if p.best_state is not None:  # an earlier step beat the last: its weights are the student
            s.accel.unwrap_model(s.module).model.load_state_dict(p.best_state, strict=False)
        val = p.best_val
    try:
        _save_student(s, lm, cfg, out_dir)
    except OSError as e:  # a full disk: the weights exist only in this process, and are lost
        raise PotstillError(f"train: the training finished ({p.done} steps) but its student could not be saved: "
                            f"{checkpoint.after_failed_write(e, p.ckpt_dir, p.fingerprint, cfg)}") from e
    if cfg.gradient_checkpointing:  # the caller's model goes on to answer, not to train
        _activation_checkpointing(s.base, False)
    summary = {"steps": p.done, "examples": len(s.examples), "tokens": p.tokens, "train_s": train_s,
            "tokens_per_s": p.tokens / train_s if train_s else None, "trainable_parameters": s.n_trainable,
            "final_loss": p.last_loss, "val_loss": (val or {}).get("val_loss"),
            **{k: v for k, v in (val or {}).items() if k != "val_loss"},
            "method": cfg.method, "objective": cfg.objective,
            "kd_signal": s.signal, "resumed_from_step": p.start or None,
            **({"best_step": p.best_step} if cfg.keep_best else {}),
            **({"stopped_early": p.stopped_at is not None} if cfg.early_stopping_patience else {}), "processes": s.accel.num_processes,
            "distributed": s.accel.distributed_type.value, "mixed_precision": "bf16" if s.cpu_bf16 else s.accel.mixed_precision}
    if s.accel.is_main_process:
        # Not deleted here: a kill in the caller's passes after this (train's int8 calibration and
        # importance matrix, minutes on a large student) lost every step, and the rerun trained from step 0.
        checkpoint.save_final(p.ckpt_dir, p.fingerprint, summary, out_dir, metrics_path)
    s.accel.wait_for_everyone()
    return summary


def _student_model(lm: LM, cfg: TrainConfig) -> tuple[Any, Any]:
    """The model to train (a PEFT wrapper for LoRA) and its base transformer, in train mode."""
    if cfg.method == "qlora":
        model = apply_lora(load_qlora_base(lm), cfg)
        base = model.get_base_model()
    elif cfg.method == "lora":
        model = apply_lora(lm.model.float().train(), cfg)
        base = model.get_base_model()
    else:
        model = lm.model.float().train()
        freeze_for(model, cfg)
        base = model
    if cfg.gradient_checkpointing:
        if not getattr(base, "supports_gradient_checkpointing", False):
            raise PotstillError(f"train.gradient_checkpointing: {type(base).__name__} does not support it in "
                                "transformers; set it to false")
        _activation_checkpointing(base, True)
    model.train()
    return model, base


def _activation_checkpointing(base: Any, on: bool) -> None:
    """transformers' activation checkpointing of every decoder layer, on or off.

    Non-reentrant: the recomputation runs under the forward's RNG state (the same dropout masks),
    under torch.compile too, and needs no input that requires a gradient. transformers also makes
    the input embeddings' output require one (for the reentrant kind, and LoRA under it); that hook
    is removed, else autograd would record the frozen layers below ``trainable_layers`` again.
    transformers 5.25 renamed ``gradient_checkpointing_*`` to ``activation_checkpointing_*``."""
    new = "activation" if hasattr(base, "activation_checkpointing_enable") else "gradient"
    if not on:
        getattr(base, f"{new}_checkpointing_disable")()
        return
    getattr(base, f"{new}_checkpointing_enable")(**{f"{new}_checkpointing_kwargs": {"use_reentrant": False}})
    if getattr(base, "_require_grads_hook", None) is not None:
        base.disable_input_require_grads()


def _lr_schedule(warmup_steps: int, total: int, kind: str = "linear"):
    """Linear warm-up, then ``kind``: linear or cosine decay to zero at the last step, or constant
    (a LambdaLR factor of the step about to run, 0-based)."""

    def lr_at(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        done = min(1.0, (step - warmup_steps) / max(1, total - warmup_steps))
        if kind == "constant":
            return 1.0
        if kind == "cosine":
            return 0.5 * (1 + math.cos(math.pi * done))
        return 1 - done

    return lr_at


def check_settings(cfg: TrainConfig) -> None:
    """Settings that only make sense together, refused before a model loads. (Not a config
    validator: each field alone stays a valid value, which the stage's rerun rules are tested on.)"""
    if cfg.keep_best and not cfg.eval_every:
        raise PotstillError("train.keep_best picks among the val losses that train.eval_every measures; set "
                            "eval_every (e.g. 50)")
    if cfg.early_stopping_patience and not cfg.eval_every:
        raise PotstillError("train.early_stopping_patience counts the val losses that train.eval_every measures; "
                            "set eval_every (e.g. 50)")


def _setup(lm: LM, fmt: PromptFormat, task: Task, records: list[Record], val: list[Record], cfg: TrainConfig,
           max_length: int) -> _Setup:
    check_settings(cfg)
    cuda = lm.device.type == "cuda"
    if not records:
        raise PotstillError("train: no training examples")
    if cfg.onpolicy_fraction > 0 and not cfg.teacher_model:
        raise PotstillError("train.onpolicy_fraction > 0 needs train.teacher_model to score the student's samples")
    signal = resolve_signal(cfg, task, records)
    # bf16 autocast by default on GPU. On a CPU only when asked (train.dtype bfloat16, worth it with
    # AMX), and through torch.autocast in the step: accelerate's process-wide state cannot change
    # its mixed precision between two trainings in one process.
    accel = accelerator(cuda, "bf16" if cuda and cfg.dtype != "float32" else "no")
    if cfg.checkpoint_every and accel.distributed_type.value == "FSDP":
        # A checkpoint is written by the main process from its model's and optimizer's state dicts;
        # under FSDP those are collectives every rank must join, and the optimizer state is sharded:
        # the main process alone would wait forever for the others, or keep its shard only. No 2-GPU
        # run has checked a sharded checkpoint, so it is refused before any loading, not left to hang.
        raise PotstillError("train.checkpoint_every is not supported under FSDP (a checkpoint would need every "
                            "rank's shard of the weights and optimizer state); launch with DDP "
                            "(accelerate launch --multi_gpu) or set train.checkpoint_every 0")
    if cfg.batch_size < accel.num_processes * cfg.grad_accum_steps:
        # Each process runs grad_accum_steps micro-batches of its share, and under DDP every one of
        # them must hold an example: a process skipping its last backward would leave the others
        # waiting in its all-reduce. Every batch holds batch_size examples (top_up repeats those of
        # a smaller set), and deal gives each process grad_accum_steps of them at least.
        split = f" x train.grad_accum_steps {cfg.grad_accum_steps}" if cfg.grad_accum_steps > 1 else ""
        raise PotstillError(f"train.batch_size {cfg.batch_size} is smaller than the {accel.num_processes} "
                            f"process{'es' if accel.num_processes > 1 else ''}{split}: every micro-batch needs "
                            "an example")
    model, base = _student_model(lm, cfg)
    spec = LossSpec(cfg.kd_kind, cfg.kd_beta, cfg.kd_alpha, cfg.kd_temperature,
                    tuple(label_token_ids(lm.tokenizer, fmt, task.labels)) if task.labels else None,
                    fused_head_ok(base), logit_scale(base) or 1.0)
    teacher = KDTeacher(cfg.teacher_model, lm, accel.device, compile=cfg.compile) if cfg.teacher_model else None
    # Before prepare(): FSDP shards differ by rank by design, the loaded weights must not.
    check_same_weights({"student": model, **({"teacher (train.teacher_model)": teacher.lm.model} if teacher else {})},
                       accel.device)
    if (signal in ("logits", "topk") or teacher) and not spec.fused:
        raise PotstillError("token-level KD needs an LM head without bias or logit soft-capping")
    with_topk = signal == "topk"
    examples = build_examples(lm, fmt, task, records, max_length, with_topk=with_topk)
    val_examples = build_examples(lm, fmt, task, val, max_length, with_topk=with_topk)
    examples, val_examples = without_cut_answers(examples, val_examples, max_length, accel.is_main_process)
    if cfg.keep_best and not val_examples:
        raise PotstillError("train.keep_best picks the step with the lowest loss on val.jsonl, and there is no "
                            "validation example (curate.val); set keep_best false or keep a val split")
    if cfg.early_stopping_patience and not val_examples:
        raise PotstillError("train.early_stopping_patience stops on the loss on val.jsonl, and there is no "
                            "validation example (curate.val); set it to 0 or keep a val split")
    if cfg.keep_best and accel.distributed_type.value == "FSDP":
        # Its snapshot is the main process's state dict, which FSDP only gathers with every rank.
        raise PotstillError("train.keep_best is not supported under FSDP; launch with DDP or set keep_best false")
    if accel.is_main_process:
        say_cut_prompts(examples, max_length, model_positions(getattr(lm.model, "config", None)))
    if signal != "labels":  # label_probs only feed the labels signal
        for e in examples + val_examples:
            e.teacher_logprobs = None
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise PotstillError("train.trainable_layers 0 leaves the student nothing to train; set it to 1 or more, "
                            "or leave it unset to train every layer")
    # Fused AdamW: one kernel over all parameters (CPU too: 47 vs 170 ms a step for 20 SmolLM2 layers).
    # FSDP keeps the per-tensor loop, the path its flat parameters were tested with.
    opt = torch.optim.AdamW(_decay_groups(params, cfg.weight_decay), lr=cfg.lr, weight_decay=cfg.weight_decay,
                            fused=accel.distributed_type.value != "FSDP")
    total = cfg.max_steps or max(1, math.ceil(math.ceil(len(examples) / cfg.batch_size) * cfg.epochs))
    warmup = math.ceil(cfg.warmup_ratio * total) if cfg.warmup_ratio is not None else cfg.warmup_steps
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_schedule(warmup, total, cfg.lr_scheduler))
    module = LossModule(model, base, compile=cfg.compile, neftune_alpha=cfg.neftune_noise_alpha)
    tied = base.get_output_embeddings().weight is base.get_input_embeddings().weight
    module, opt = accel.prepare(module, opt)
    inner = accel.unwrap_model(module).base
    if tied and inner.get_output_embeddings().weight is not inner.get_input_embeddings().weight:
        # Seen with accelerate 1.15's FSDP2: the LM head became its own parameter, outside the
        # optimizer, so it never trained and the loss stalled (benchmarks/multi_gpu.json).
        raise PotstillError("this launch unties the student's tied input/output embeddings (FSDP2 through "
                            "accelerate), so its LM head would not train; launch FSDP with --fsdp_version 1 "
                            "--fsdp_use_orig_params true, or use DDP")
    return _Setup(accel, module, opt, sched, base, spec, teacher, signal, examples, val_examples,
                  sum(p.numel() for p in params), total, cpu_bf16=not cuda and cfg.dtype == "bfloat16")


def _resume(s: _Setup, lm: LM, cfg: TrainConfig, max_length: int, out_dir: Path, metrics_path: Path) -> _Progress:
    """A fresh start, or the latest checkpoint of the same settings and data (with the curve up to it)."""
    order: list[int] = []
    rng = random.Random(cfg.seed)
    tokens, start, elapsed0 = 0, 0, 0.0
    ckpt_dir = checkpoint.dir_for(out_dir)
    fingerprint = hash_obj({"cfg": checkpoint.settings(cfg),
                            "data": [(e.ids, e.n_prompt, e.teacher_logprobs, e.topk) for e in s.examples],
                            "max_length": max_length, "world": s.accel.num_processes, "model": lm.identity,
                            # The KD teacher by its weights, not train.teacher_model's path: another model
                            # saved in the same folder resumed the first teacher's run (the student then
                            # distilled from two), or returned its finished student untrained.
                            **({"teacher": s.teacher.lm.identity} if s.teacher is not None else {})})
    if cfg.resume:
        # The main process decides (it alone writes final.json and may prune the student dir).
        done = checkpoint.finished(ckpt_dir, fingerprint, out_dir, metrics_path) if s.accel.is_main_process else None
        done = gather_objects(done)[0]
        if done is not None:
            return _Progress(0, order, rng, 0, 0.0, [], None, fingerprint, ckpt_dir, finished=done)
    found = checkpoint.latest(ckpt_dir, fingerprint) if cfg.resume and cfg.checkpoint_every else None
    if found is None and s.accel.is_main_process and (why := checkpoint.not_resumed(ckpt_dir, cfg)):
        say(f"[yellow]{escape(why)}[/yellow]")
    kept: list[str] = []
    if found is not None:
        state = checkpoint.load(found, s.accel.unwrap_model(s.module).model, s.opt, s.sched, rng,
                                rank=s.accel.process_index)
        start, order, tokens, elapsed0 = state["step"], state["order"], state["tokens"], state["elapsed_s"]
        # The curve up to the checkpoint, as the checkpoint kept it: metrics.jsonl may since hold the
        # rows of a run with other settings. Later rows are redone.
        kept = checkpoint.curve(found)
        if kept is None:  # a checkpoint written before checkpoints kept their curve
            kept = metrics_path.read_text(encoding="utf-8").splitlines() if metrics_path.exists() else []
        kept = [ln for ln in kept if ln and json.loads(ln)["step"] <= start]
        best = (state.get("best_step"), state.get("best_val"),
                checkpoint.best_weights(found) if s.accel.is_main_process else None)
    metrics_path.parent.mkdir(parents=True, exist_ok=True)
    last_loss = json.loads(kept[-1])["loss"] if kept else None
    p = _Progress(start, order, rng, tokens, elapsed0, kept, last_loss, fingerprint, ckpt_dir)
    if found is not None:
        p.best_step, p.best_val, p.best_state = best
    if cfg.early_stopping_patience:  # the count so far, from the curve's measurements (every process reads it)
        for row in map(json.loads, kept):
            if "val_loss" in row:
                _no_better(p, row["val_loss"], cfg)
    return p


def _step_loop(s: _Setup, p: _Progress, lm: LM, cfg: TrainConfig, max_length: int, metrics_path: Path,
               on_row: Callable[[dict[str, Any]], None] | None = None) -> float:
    """The optimiser steps from ``p.start``, one metrics row each; returns the training seconds."""
    main = s.accel.is_main_process
    t0 = time.perf_counter() - p.elapsed0
    if main:
        # The curve up to the checkpoint, in place before the first step: truncated and rewritten
        # through the step's write buffer, a kill during that step left metrics.jsonl empty and the
        # next resume had no rows before its checkpoint to keep.
        write_text(metrics_path, "".join(ln + "\n" for ln in p.kept))
    on_row = on_row if main else None
    for ln in p.kept if on_row else ():
        on_row(json.loads(ln))
    mf = open(metrics_path if main else "/dev/null", "a", encoding="utf-8")
    try:
        with mf, bar("train" if main else "", s.total) as advance:
            _steps(s, p, lm, cfg, max_length, mf, advance, t0, metrics_path, on_row)
    except KeyboardInterrupt:
        if main:  # Ctrl-C: say what a rerun will do (typer exits 130 without a word)
            then = checkpoint.rerun(p.ckpt_dir, p.fingerprint, cfg)
            say(f"train: interrupted after {p.done} of {s.total} steps; {then}")
        raise
    except OSError as e:  # a checkpoint that did not fit (a full disk): what was lost, and what a rerun does
        raise PotstillError(f"train: stopped after {p.done} of {s.total} steps: "
                            f"{checkpoint.after_failed_write(e, p.ckpt_dir, p.fingerprint, cfg)}") from e
    return time.perf_counter() - t0


def _steps(s: _Setup, p: _Progress, lm: LM, cfg: TrainConfig, max_length: int, mf: Any, advance: Any,
           t0: float, metrics_path: Path, on_row: Callable[[dict[str, Any]], None] | None = None) -> None:
    accel = s.accel
    advance(p.start)
    p.done = p.start
    for step in range(p.start, s.total):
        mine, onpolicy = _next_batch(s, p, lm, cfg, max_length)
        # grad_accum_steps micro-batches of balanced token counts (one, the whole share, by default).
        micro = [collate(m, lm.tokenizer.pad_token_id, accel.device, pack=cfg.pack, max_length=max_length,
                         kd_tokens=s.signal == "logits", with_topk=s.signal == "topk")
                 for m in deal(mine, cfg.grad_accum_steps)]
        logged, grad_norm = _optimiser_step(s, cfg, mine, micro)
        if not math.isfinite(logged["loss"]):
            # Every later step would be NaN too, and a student saved from here answers nothing
            # (the loss is global, so every process stops here alike).
            before = f" after {p.last_loss:.4g} at the step before" if p.last_loss is not None else ""
            raise PotstillError(
                f"train: the loss is {logged['loss']} at step {step + 1} of {s.total}{before}; nothing was "
                f"saved. Lower train.lr (now {cfg.lr:g}) or check the data ({metrics_path} has the steps so far)")
        p.tokens += int(logged.pop("tokens"))
        p.last_loss = logged["loss"]
        row = {"step": step + 1, **logged, "grad_norm": grad_norm, "onpolicy": onpolicy,
               "lr": s.sched.get_last_lr()[0], "tokens": p.tokens, "elapsed_s": round(time.perf_counter() - t0, 3)}
        if cfg.eval_every and s.val_examples and ((step + 1) % cfg.eval_every == 0 or step + 1 == s.total):
            # Every process takes part (under FSDP the forward gathers shards); the main one writes it.
            p.val = _val(s, lm, cfg, max_length)
            row.update(p.val)
            if cfg.early_stopping_patience and step + 1 < s.total:
                stop = _no_better(p, p.val["val_loss"], cfg)
                # Every process measured the same weights on the same val set; the main one's count decides.
                if gather_objects(stop)[0]:
                    p.stopped_at = step + 1
            last = step + 1 == s.total or p.stopped_at is not None
            if cfg.keep_best and accel.is_main_process and (p.best_val is None
                                                            or p.val["val_loss"] < p.best_val["val_loss"]):
                p.best_step, p.best_val = step + 1, p.val
                # A copy on the host, unless it is the last step's: then the model itself is the best.
                p.best_state = (checkpoint.trainable_state(accel.unwrap_model(s.module).model)
                                if not last else None)
        mf.write(json.dumps(row) + "\n")
        mf.flush()  # so `tail -f metrics.jsonl` follows a run
        if on_row:
            on_row(row)
        advance(1, loss=f"{logged['loss']:.4f}")
        p.done = step + 1
        if p.stopped_at is not None:  # no checkpoint: the student is saved next
            break
        if cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0 and step + 1 < s.total:
            # Every rank's own RNG states (dropout masks, on-policy samples differ by rank): with rank 0's
            # alone, the other ranks resumed on rank 0's draws and the curve left the uninterrupted one.
            rngs = gather_objects(checkpoint.rng_state())
            if accel.is_main_process:
                checkpoint.save(p.ckpt_dir, step + 1, p.fingerprint, accel.unwrap_model(s.module).model, s.opt,
                                s.sched, p.rng, p.order, {"tokens": p.tokens, "elapsed_s": time.perf_counter() - t0,
                                                          "best_step": p.best_step, "best_val": p.best_val,
                                                          # Named when a rerun does not resume it (not_resumed).
                                                          "settings": checkpoint.settings(cfg)},
                                rank_rngs=rngs, metrics=metrics_path, best=p.best_state)
            accel.wait_for_everyone()


def _decay_groups(params: list[torch.nn.Parameter], weight_decay: float) -> list[Any]:
    """AdamW's parameter groups: ``weight_decay`` on matrices only. Biases and norm scales (one
    dimension) are not decayed, as transformers' Trainer and TRL leave them: decay pulls a norm's
    scale towards 0, not towards its 1.0 start. With no decay, the one group of before."""
    if not weight_decay:
        return params
    groups = [{"params": [p for p in params if p.ndim >= 2]},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def top_up(order: list[int], n: int, batch_size: int, rng: random.Random) -> list[int]:
    """``order`` (what is left of this pass over ``n`` examples, fewer than ``batch_size``) followed
    by fresh shuffled passes, as many as the next batch needs to be full: one, unless the set is
    smaller than a batch (3 examples, batches of 8: the leftover and 2 or 3 more passes).

    Within the batch being filled, each new pass puts first the examples the batch holds the fewest
    times, in their shuffled order: with ``n >= batch_size`` those the leftover does not hold (a
    leftover one drawn again sat twice in one batch: 172 of 200 seeds at 5 examples, batches of 4);
    with fewer, every example comes floor or ceil of batch_size / n times (3 examples, 8 a batch: 3,
    3 and 2). The rest of the pass, past the batch, keeps its shuffled order; every pass still holds
    each example once."""
    order = list(order)
    while len(order) < batch_size:
        fresh = list(range(n))
        rng.shuffle(fresh)
        held = Counter(order)  # all of order is in the batch being filled: it is shorter than one
        first = sorted(fresh, key=lambda i: held[i])[: batch_size - len(order)]  # stable: shuffled within a count
        taken = set(first)
        order += first + [i for i in fresh if i not in taken]
    return order


def _next_batch(s: _Setup, p: _Progress, lm: LM, cfg: TrainConfig, max_length: int) -> tuple[list[Example], bool]:
    """This process's share of the next batch (reshuffled each pass), sampled from the student when on-policy."""
    if len(p.order) < cfg.batch_size:
        p.order = top_up(p.order, len(s.examples), cfg.batch_size, p.rng)
    batch = [s.examples[i] for i in p.order[: cfg.batch_size]]
    p.order = p.order[cfg.batch_size :]
    onpolicy = cfg.onpolicy_fraction > 0 and p.rng.random() < cfg.onpolicy_fraction
    # At least grad_accum_steps examples a process, so each of its micro-batches holds one (_setup
    # checked batch_size >= processes x grad_accum_steps, and the batch is always full).
    mine = deal(batch, s.accel.num_processes, least=cfg.grad_accum_steps)[s.accel.process_index]
    if onpolicy:
        mine = sample_batch(s.base, mine, lm.tokenizer.pad_token_id,
                            stop_token_ids(lm.tokenizer, getattr(s.base, "generation_config", None)),
                            cfg.onpolicy_max_new_tokens, cfg.onpolicy_temperature, s.accel.device,
                            rows=s.teacher.rows if s.teacher is not None else None, max_length=max_length)
    return mine, onpolicy


def _optimiser_step(s: _Setup, cfg: TrainConfig, mine: list[Example], micro: list[Batch]) -> tuple[dict[str, float], float]:
    """Loss and backward of each micro-batch, then one optimiser step; the loss terms and token
    count as global values, and the grad norm before clipping.

    Every term of every micro-batch is divided by the term's count over all of them (and all
    processes), so the summed gradients are those of one batch of ``mine``: not the mean of
    per-micro-batch means, which weights a token by how few others its micro-batch holds."""
    accel, teacher = s.accel, s.teacher
    local = {k: sum(b.counts()[k] for b in micro) for k in TERMS}
    counts = global_counts(accel, local, TERMS)
    loss = torch.zeros((), device=accel.device)
    parts: dict[str, Any] = {}
    for i, b in enumerate(micro):
        # DDP all-reduces in the last micro-batch's backward only; the others add to local gradients.
        with accel.no_sync(s.module) if i < len(micro) - 1 else contextlib.nullcontext():
            th = teacher.hidden(b) if teacher is not None and b.counts()["kd"] else None
            with accel.autocast(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=s.cpu_bf16):
                sums = s.module(b, s.spec, th, teacher.w if teacher else None)
                part_loss, part = combine(sums, counts, cfg)
            # DDP averages gradients over processes; the terms are global means.
            accel.backward(part_loss * accel.num_processes)
        loss = loss + part_loss.detach()
        for k, v in part.items():
            parts[k] = parts.get(k, 0.0) + (v.detach() if torch.is_tensor(v) else v)
    # Through accelerate, so the norm is of the whole model under FSDP too (shards summed).
    grad_norm = float(accel.clip_grad_norm_(s.module.parameters(), cfg.max_grad_norm or float("inf")))
    s.opt.step()
    s.sched.step()
    s.opt.zero_grad(set_to_none=True)
    logged = global_values(accel, {"loss": loss, **parts, "tokens": float(sum(len(e.ids) for e in mine))})
    return logged, grad_norm


def _val(s: _Setup, lm: LM, cfg: TrainConfig, max_length: int) -> dict[str, float]:
    # On the prepared module: under FSDP every process takes part in gathering the shards.
    return evaluate_val(s.module, s.val_examples, cfg, s.spec, s.teacher, lm.tokenizer.pad_token_id,
                        s.accel.device, max_length, s.signal)


def _save_student(s: _Setup, lm: LM, cfg: TrainConfig, out_dir: Path) -> None:
    """The finished weights (or LoRA adapter) to ``out_dir``, written once."""
    from accelerate.utils import DistributedType

    accel = s.accel
    sharded = accel.distributed_type == DistributedType.FSDP
    # Under FSDP the full weights exist only once gathered (a collective: every process calls it).
    full_state = _unprefixed(accel.get_state_dict(s.module), "model.") if sharded else None
    model = accel.unwrap_model(s.module).model
    model.eval()
    if accel.is_main_process:
        if cfg.method in ("lora", "qlora"):
            for conf in model.peft_config.values():
                # A base read from a relative path ('./base') is named by it: resolved against the cwd
                # of whoever loads the adapter later, then tried as a hub id.
                if conf.base_model_name_or_path and Path(conf.base_model_name_or_path).is_dir():
                    conf.base_model_name_or_path = str(Path(conf.base_model_name_or_path).resolve())
                elif conf.base_model_name_or_path and not conf.revision:
                    # A hub base is named by its id alone: PEFT then loads whatever revision the hub
                    # (or the cache's refs/main) holds at load time, not the commit this adapter was
                    # trained on and its run keyed by. PEFT loads the base at ``revision``.
                    repo, commit = hub_split(hub_revision(conf.base_model_name_or_path))
                    conf.base_model_name_or_path, conf.revision = repo, commit
            # Replaced whole, as a full fine-tune is: saved into the old directory, an adapter sat
            # beside an earlier full student's weights, and through a promoted student's symlink it
            # overwrote the archived champion in RUN/students/.
            with atomic_dir(out_dir) as tmp:
                model.save_pretrained(tmp, state_dict=full_state)
                lm.tokenizer.save_pretrained(tmp)
                # The folder names the whole base; this says how much of it the adapter goes on.
                write_json(tmp / ADAPTER_LAYERS, {"num_hidden_layers": int(model.config.num_hidden_layers)})
        else:
            save_lm(model, lm.tokenizer, out_dir, state_dict=full_state)
    accel.wait_for_everyone()


def _unprefixed(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The trained model's entries of ``LossModule``'s state dict (it also lists ``base.*``)."""
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


