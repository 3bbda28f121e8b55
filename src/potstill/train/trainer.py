"""Fine-tune the student on teacher outputs: SFT on completions, optionally label-level KD.

Memory: the LM head is applied only at completion positions (for classification, 1-3 tokens per
example), so no batch x sequence x vocabulary tensor ever exists; at B=8, T=80 and V=49,152 the
full logits would be 31.5M floats (126 MB) per step, the completion-only ones about 1.2 MB.

Speed on CPU: with ``trainable_layers=N`` only the top N transformer layers get gradients, and
autograd records nothing below them, so the bottom of the network costs one forward pass.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from potstill.config import TrainConfig
from potstill.models.loading import LM, save_lm
from potstill.models.prompting import PromptFormat, encode_prompt, label_token_ids
from potstill.models.scoring import apply_head, decoder
from potstill.progress import bar
from potstill.records import Record
from potstill.tasks import Task
from potstill.train.losses import label_distribution_kd


@dataclass
class Example:
    ids: list[int]
    n_prompt: int
    teacher_logprobs: list[float] | None  # over task labels, for KD


def build_examples(lm: LM, fmt: PromptFormat, task: Task, records: list[Record], max_length: int) -> list[Example]:
    tok = lm.tokenizer
    out = []
    for r in records:
        prompt = encode_prompt(tok, fmt, fmt.query(tok, r.messages), first=True)
        completion = tok(fmt.completion(tok, task.target(r)), add_special_tokens=False)["input_ids"]
        # Keep the whole completion; cut the prompt from the left if the pair is too long.
        keep = max(1, max_length - len(completion))
        prompt = prompt[-keep:]
        tlp = None
        if task.labels and r.label_probs:
            tlp = [math.log(max(r.label_probs.get(lab, 0.0), 1e-12)) for lab in task.labels]
        out.append(Example(ids=prompt + completion, n_prompt=len(prompt), teacher_logprobs=tlp))
    return out


def freeze_for(model: Any, cfg: TrainConfig) -> None:
    """Full method: train everything, or only the top ``trainable_layers`` layers and the final norm."""
    if cfg.trainable_layers is None:
        for p in model.parameters():
            p.requires_grad_(True)
        return
    for p in model.parameters():
        p.requires_grad_(False)
    body = decoder(model)
    layers = body.layers
    for layer in layers[len(layers) - cfg.trainable_layers :]:
        for p in layer.parameters():
            p.requires_grad_(True)
    if cfg.trainable_layers and getattr(body, "norm", None) is not None:
        for p in body.norm.parameters():
            p.requires_grad_(True)


def apply_lora(model: Any, cfg: TrainConfig) -> Any:
    from peft import LoraConfig, get_peft_model

    conf = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules="all-linear", task_type="CAUSAL_LM")
    return get_peft_model(model, conf)


def collate(batch: list[Example], pad: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    T = max(len(e.ids) for e in batch)
    ids = torch.full((len(batch), T), pad, dtype=torch.long)
    mask = torch.zeros((len(batch), T), dtype=torch.long)
    labels = torch.full((len(batch), T), -100, dtype=torch.long)
    for i, e in enumerate(batch):
        ids[i, : len(e.ids)] = torch.tensor(e.ids)
        mask[i, : len(e.ids)] = 1
        labels[i, e.n_prompt : len(e.ids)] = torch.tensor(e.ids[e.n_prompt :])
    return ids.to(device), mask.to(device), labels.to(device)


def step_loss(model: Any, batch: list[Example], ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor,
              cfg: TrainConfig, label_ids: list[int] | None) -> tuple[torch.Tensor, dict[str, float]]:
    """Cross-entropy on completion tokens (+ KD on the first completion token's label logits)."""
    hidden = decoder(model)(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
    # Position t predicts token t+1: gather hidden states that predict a completion token.
    target = labels[:, 1:]
    sel = target != -100
    h = hidden[:, :-1][sel]
    logits = apply_head(model, h).float()
    ce = torch.nn.functional.cross_entropy(logits, target[sel])
    parts = {"ce": float(ce.detach())}
    loss = ce
    if cfg.objective == "kd" and label_ids is not None:
        rows = [i for i, e in enumerate(batch) if e.teacher_logprobs is not None]
        if rows:
            first = torch.tensor([batch[i].n_prompt - 1 for i in rows], device=ids.device)
            h_first = hidden[torch.tensor(rows, device=ids.device), first]
            student = apply_head(model, h_first, label_ids).float()
            teacher = torch.tensor([batch[i].teacher_logprobs for i in rows], device=ids.device)
            kd = label_distribution_kd(student, torch.arange(len(label_ids), device=ids.device), teacher,
                                       temperature=cfg.kd_temperature)
            kd = kd * cfg.kd_temperature**2
            parts["kd"] = float(kd.detach())
            loss = ce + cfg.kd_weight * kd
    return loss, parts


def train(lm: LM, fmt: PromptFormat, task: Task, records: list[Record], val: list[Record], cfg: TrainConfig,
          max_length: int, out_dir: Path, metrics_path: Path) -> dict[str, Any]:
    """Train ``lm`` in place on ``records``; save weights (or the LoRA adapter) to ``out_dir``."""
    from accelerate import Accelerator

    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    accel = Accelerator(cpu=lm.device.type == "cpu", mixed_precision="bf16" if lm.device.type == "cuda" else "no")
    model = lm.model.float().train()
    if cfg.method == "lora":
        model = apply_lora(model, cfg)
        base = model.get_base_model()
    else:
        freeze_for(model, cfg)
        base = model
    label_ids = label_token_ids(lm.tokenizer, fmt, task.labels) if task.labels else None
    examples = build_examples(lm, fmt, task, records, max_length)
    val_examples = build_examples(lm, fmt, task, val, max_length)
    params = [p for p in model.parameters() if p.requires_grad]
    n_trainable = sum(p.numel() for p in params)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(examples) / cfg.batch_size)
    total = max(1, math.ceil(steps_per_epoch * cfg.epochs))

    def lr_at(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        return max(0.0, 1 - (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    model, opt = accel.prepare(model, opt)
    pad = lm.tokenizer.pad_token_id
    order: list[int] = []
    rng = random.Random(cfg.seed)
    tokens = 0
    t0 = time.perf_counter()
    metrics_path.parent.mkdir(parents=True, exist_ok=True)
    with open(metrics_path, "w") as mf, bar("train", total) as advance:
        for step in range(total):
            if len(order) < cfg.batch_size:
                fresh = list(range(len(examples)))
                rng.shuffle(fresh)
                order += fresh
            batch = [examples[i] for i in order[: cfg.batch_size]]
            order = order[cfg.batch_size :]
            ids, mask, labels = collate(batch, pad, accel.device)
            with accel.autocast():
                loss, parts = step_loss(base, batch, ids, mask, labels, cfg, label_ids)
            accel.backward(loss)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            tokens += int(mask.sum())
            row = {"step": step + 1, "loss": float(loss.detach()), **parts, "lr": sched.get_last_lr()[0],
                   "tokens": tokens, "elapsed_s": round(time.perf_counter() - t0, 3)}
            mf.write(json.dumps(row) + "\n")
            mf.flush()  # so `tail -f metrics.jsonl` follows a run
            advance(1, loss=f"{float(loss.detach()):.4f}")
    train_s = time.perf_counter() - t0
    val_loss = evaluate_loss(base, val_examples, cfg, label_ids, pad, accel.device)
    model = accel.unwrap_model(model)
    model.eval()
    if cfg.method == "lora":
        out_dir.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(out_dir)
        lm.tokenizer.save_pretrained(out_dir)
    else:
        save_lm(model, lm.tokenizer, out_dir)
    return {"steps": total, "examples": len(examples), "tokens": tokens, "train_s": train_s,
            "tokens_per_s": tokens / train_s if train_s else None, "trainable_parameters": n_trainable,
            "final_loss": float(loss.detach()), "val_loss": val_loss, "method": cfg.method, "objective": cfg.objective}


def evaluate_loss(model: Any, examples: list[Example], cfg: TrainConfig, label_ids: list[int] | None, pad: int,
                  device: torch.device) -> float | None:
    if not examples:
        return None
    total, n = 0.0, 0
    with torch.inference_mode():
        for i in range(0, len(examples), cfg.batch_size):
            batch = examples[i : i + cfg.batch_size]
            ids, mask, labels = collate(batch, pad, device)
            loss, _ = step_loss(model, batch, ids, mask, labels, cfg, label_ids)
            total += float(loss) * len(batch)
            n += len(batch)
    return total / n
