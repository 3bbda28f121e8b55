"""One training run for test_distributed: ``torchrun --nproc_per_node N ddp_worker.py STUDENT TEACHER OUT``."""

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


def run(student: str, teacher: str, out: str) -> dict:
    task = get_task(TaskConfig(type="freetext", instruction="summary"))
    records = [Record(messages=[{"role": "user", "content": t}], output=o, valid=True) for t, o in zip(TEXTS, OUTPUTS)]
    cfg = TrainConfig(objective="kd", teacher_model=teacher, kd_kind="jsd", kd_weight=2.0, lr=0.01, batch_size=4,
                      epochs=1.5, seed=1)
    lm = load_lm(student)
    return train(lm, student_format(lm, task), task, records, [], cfg, 64, Path(out) / "student",
                 Path(out) / "metrics.jsonl")


if __name__ == "__main__":
    torch.set_num_threads(1)
    summary = run(*sys.argv[1:4])
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({"processes": summary["processes"], "steps": summary["steps"]}))
