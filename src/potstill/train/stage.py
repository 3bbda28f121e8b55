"""`potstill train`: the student on train.jsonl, into student/ with metrics.jsonl and train.json."""

from __future__ import annotations

import os
from typing import Any

from potstill import tracking
from potstill.config import Config
from potstill.errors import PotstillError
from potstill.models.loading import load_lm
from potstill.progress import say
from potstill.records import read_records, write_json
from potstill.rundir import RunDir
from potstill.stage import run_stage
from potstill.students import student_format
from potstill.tasks import get_task
from potstill.train.distributed import load_on_every_rank
from potstill.train.trainer import train


def train_stage(cfg: Config, force: bool = False) -> dict[str, Any]:
    run = RunDir(cfg.run_dir)
    settings = {"train": cfg.train.model_dump(), "student": cfg.student.model_dump(), "task": cfg.task.model_dump()}

    def body(run: RunDir) -> dict[str, Any]:
        if not (run / "train.jsonl").exists():
            raise PotstillError(f"{run / 'train.jsonl'} not found: run `potstill curate` first")
        from potstill.preflight import require

        require(cfg, "train")
        task = get_task(cfg.task)
        records = read_records(run / "train.jsonl")
        val = read_records(run / "val.jsonl") if (run / "val.jsonl").exists() else []
        with load_on_every_rank():
            lm = load_lm(cfg.student.model, device=cfg.train.device, num_layers=cfg.student.num_layers)
        summary = train(lm, student_format(lm, task), task, records, val, cfg.train, cfg.student.max_length,
                        run / "student", run / "metrics.jsonl")
        summary["base_model"] = cfg.student.model
        if summary.get("resumed_from_step"):
            say(f"train: resumed from the checkpoint at step {summary['resumed_from_step']} ({run / 'student.ckpt'})")
        if int(os.environ.get("RANK", "0")) != 0:  # `accelerate launch`: the main process writes
            return summary
        write_json(run / "train.json", summary)
        say(f"train: {summary['steps']} steps over {summary['examples']} examples, {summary['tokens']} tokens, "
            f"{summary['train_s']:.1f} s, final loss {summary['final_loss']:.4f}, val loss {summary['val_loss']}")
        return summary

    tracking.check(cfg)
    result = run_stage("train", cfg, settings, [run / "train.jsonl", run / "val.jsonl"],
                       ["student", "metrics.jsonl", "train.json"], body, force)
    if not result["skipped"] and int(os.environ.get("RANK", "0")) == 0:
        tracking.log_stage(cfg, "train", settings, tracking.numbers(result), tracking.read_steps(run / "metrics.jsonl"),
                           [run / "train.json", run / "metrics.jsonl"])
    return result
