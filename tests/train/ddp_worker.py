"""One training run for test_distributed: ``torchrun --nproc_per_node N ddp_worker.py STUDENT TEACHER OUT [MODE]``.

MODE ``rank0-loading`` gives every ``from_pretrained`` the behaviour transformers 5.17 has under
``accelerate launch``'s default FSDP loading (``FSDP_CPU_RAM_EFFICIENT_LOADING=true``, set by the
test): a process of local rank > 0 gets empty weights, which FSDP is expected to fill by a
broadcast from rank 0 (on 2x H200 they came back all 0.0). FSDP itself needs CUDA in accelerate,
so the run stays DDP on CPU; the loading path is the one that left the teacher empty.
transformers 5.24 (this venv) reads the files on every rank, so the mode reproduces the older one.
MODE ``other-teacher``: rank 1 is given TEACHER=STUDENT, a different model from rank 0's.
MODE ``small-accum2``: 3 training records, fewer than one batch of 4, as two micro-batches a process.
MODE ``accum2``: each process runs its share of every batch as two micro-batches (train.grad_accum_steps).
MODE ``dropout-ckpt``: attention dropout on (each rank draws its own masks) and a checkpoint every
step; ``dropout-ckpt-crash``: the same, and every rank fails in its third optimiser step.
MODE ``early-stop``: a val split measured every step and early stopping that ends the run at step 2
of 6 (threshold 100: no measurement counts as lower); every rank writes its summary to OUT/rankR.json.
"""

import json
import os
import sys
from pathlib import Path

import torch

from potstill.config import TaskConfig, TrainConfig
from potstill.models.loading import load_lm
from potstill.records import Record
from potstill.students import student_format
from potstill.tasks import get_task
from potstill.train.trainer import train

# Lengths differ, so the processes hold different token counts in every batch.
TEXTS = ["the team won the match in the game", "new phone", "the minister and the party said", "a goal",
         "the internet and computer software", "a vote", "the bank profit and market shares", "a film"]
OUTPUTS = ["sports match", "tech phone software new", "politics", "sports goal win team match",
           "tech", "politics election vote party", "business bank", "entertainment film award star music"]


def rank0_only_loading() -> None:
    from transformers import AutoModelForCausalLM

    real = AutoModelForCausalLM.from_pretrained

    def from_pretrained(*args, **kwargs):
        model = real(*args, **kwargs)
        flag = os.environ.get("FSDP_CPU_RAM_EFFICIENT_LOADING", "false").lower() in ("1", "true")
        if flag and torch.distributed.is_initialized() and int(os.environ.get("LOCAL_RANK", "0")) > 0:
            with torch.no_grad():
                for p in model.parameters():
                    p.zero_()
        return model

    AutoModelForCausalLM.from_pretrained = from_pretrained


def run(student: str, teacher: str, out: str, n: int = len(TEXTS), dropout: float = 0.0, accum: int = 1,
        early: bool = False) -> dict:
    task = get_task(TaskConfig(type="freetext", instruction="summary"))
    records = [Record(messages=[{"role": "user", "content": t}], output=o, valid=True) for t, o in zip(TEXTS[:n], OUTPUTS[:n])]
    stop = {"eval_every": 1, "early_stopping_patience": 1, "early_stopping_threshold": 100.0, "keep_best": True,
            "epochs": 3} if early else {}
    cfg = TrainConfig(**{"objective": "kd", "teacher_model": teacher, "kd_kind": "jsd", "kd_weight": 2.0, "lr": 0.01,
                         "batch_size": 4, "epochs": 1.5, "seed": 1, "checkpoint_every": 1 if dropout else 0,
                         "grad_accum_steps": accum, **stop})
    lm = load_lm(student)
    if dropout:
        for layer in lm.model.model.layers:
            layer.self_attn.attention_dropout = dropout
    return train(lm, student_format(lm, task), task, records, records[:3] if early else [], cfg, 64,
                 Path(out) / "student", Path(out) / "metrics.jsonl")


if __name__ == "__main__":
    torch.set_num_threads(1)
    student, teacher, out = sys.argv[1:4]
    mode = sys.argv[4] if len(sys.argv) > 4 else ""
    if mode == "rank0-loading":
        rank0_only_loading()
    if mode == "other-teacher" and int(os.environ.get("RANK", "0")) == 1:
        teacher = student
    if mode == "dropout-ckpt-crash":
        real_step, calls = torch.optim.AdamW.step, []

        def step(self, *a, **kw):
            calls.append(1)
            if len(calls) == 3:
                raise SystemExit(3)
            return real_step(self, *a, **kw)

        torch.optim.AdamW.step = step
    summary = run(student, teacher, out, 3 if mode == "small-accum2" else len(TEXTS),
                  dropout=0.3 if mode.startswith("dropout-ckpt") else 0.0, accum=2 if "accum2" in mode else 1,
                  early=mode == "early-stop")
    if mode == "early-stop":
        Path(out, f"rank{os.environ.get('RANK', '0')}.json").write_text(json.dumps(summary))
    from potstill.train.distributed import shutdown

    shutdown()  # as the CLI does: left to the exit, a rank aborted now and then after the run had finished
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({"processes": summary["processes"], "steps": summary["steps"]}))
