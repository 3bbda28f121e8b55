"""Room on disk for a training, checked before its first step.

A full disk mid-run is caught where it is written (``atomic.atomic_dir``, a rerun hint), but by then
the steps are spent: with ``checkpoint_every`` 0 a student that does not fit is lost whole. What a
training writes follows from the student's parameters and their dtype, so it is checked up front:

- the student: every weight (a full fine-tune) or the adapter's (LoRA), at the weights' own dtype;
- with ``checkpoint_every``, per save: the trainable weights, AdamW's two moments of each (same dtype)
  and, with ``keep_best``, the best step's weights. A save writes the new checkpoint before it drops
  the last, and the student is saved while the last still sits beside it, so the peak is the larger of
  two checkpoints and one checkpoint plus the student.

The HF or GGUF export is `potstill export`'s, not train's: that command writes into its own folder.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from potstill.errors import PotstillError


def size_text(n: float) -> str:
    """Bytes as a reader takes them: 512 B, 3.4 MB, 1.27 GB (powers of 1,000, as df -H)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.3g} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def bytes_needed(total: int, trainable: int, itemsize: int, checkpoint_every: int, keep_best: bool,
                 adapter: bool) -> dict[str, int]:
    """The most a training writes at once, in bytes, and its parts: ``total`` parameters, ``trainable`` of
    them (a LoRA's adapters; all of a full fine-tune's), each ``itemsize`` bytes. A 135M-parameter fp32
    student: 540 MB; with checkpoints, 3 x 540 MB a save (weights and two moments), and a peak of 2 saves,
    3.24 GB."""
    student = (trainable if adapter else total) * itemsize
    ckpt = trainable * itemsize * (3 + int(keep_best)) if checkpoint_every else 0
    return {"student": student, "checkpoint": ckpt, "total": max(2 * ckpt, ckpt + student)}


def check_room(folder: Path, need: dict[str, int]) -> None:
    """One line, before any step, where ``folder``'s file system has less free than ``need['total']``."""
    free = shutil.disk_usage(folder).free
    if free >= need["total"]:
        return
    parts = f"the student {size_text(need['student'])}" + (
        f", and checkpoints of {size_text(need['checkpoint'])} each (train.checkpoint_every), two at once while "
        "one is saved" if need["checkpoint"] else "")
    raise PotstillError(f"train: {folder} has {size_text(free)} free, and this training writes up to "
                        f"{size_text(need['total'])} there ({parts}): free space there, or set run_dir on a "
                        "larger disk, and run the same command again")


def lora_parameters(model: Any, r: int, targets: list[str] | str) -> int:
    """The parameters LoRA adapters of rank ``r`` add on ``targets`` (``train.lora_targets``): r x (in +
    out) on each linear layer named (all-linear: every one but the LM head), as PEFT builds them."""
    import torch

    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    n = 0
    for name, m in model.named_modules():
        if not isinstance(m, torch.nn.Linear) or m is head:
            continue
        if targets == "all-linear" or any(name == t or name.endswith(f".{t}") for t in targets):
            n += r * (m.in_features + m.out_features)
    return n


def training_needs(model: Any, cfg: Any) -> dict[str, int]:
    """``bytes_needed`` of training ``model`` under ``cfg`` (a ``TrainConfig``); a full fine-tune counts
    every weight trainable (``trainable_layers`` trains fewer: this is the most it writes)."""
    params = list(model.parameters())
    total = sum(p.numel() for p in params)
    itemsize = max((p.element_size() for p in params if p.is_floating_point()), default=4)
    adapter = cfg.method in ("lora", "qlora")
    trainable = lora_parameters(model, cfg.lora_r, cfg.lora_targets) if adapter else total
    if adapter:
        itemsize = 4  # counted at fp32, the most an adapter weight takes (a QLoRA base's are 4-bit)
    return bytes_needed(total, trainable, itemsize, cfg.checkpoint_every, cfg.keep_best, adapter)
