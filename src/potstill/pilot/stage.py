"""`potstill pilot`: pilot.json and a printed table, before a cent goes to training."""

from __future__ import annotations

import random
from typing import Any

from potstill.config import Config
from potstill.generate import run_generate
from potstill.progress import say
from potstill.records import write_json
from potstill.report import measure_student, measure_teacher, print_table
from potstill.rundir import RunDir
from potstill.stage import load_inputs
from potstill.students import untrained_student_engine
from potstill.tasks import get_task


def pilot_stage(cfg: Config, force: bool = False) -> dict[str, Any]:
    from potstill.pipeline import STAGES

    return STAGES["pilot"].run(cfg, force)


def pilot_body(cfg: Config, run: RunDir) -> dict[str, Any]:
    records = load_inputs(cfg)
    sample = random.Random(cfg.pilot.seed).sample(records, min(cfg.pilot.n, len(records)))
    task = get_task(cfg.task)
    with run.ledger() as ledger:
        labelled, stats = run_generate(cfg, sample, ledger, stage="pilot")
        valid = [r for r in labelled if r.valid]
        teacher = measure_teacher(task, valid, ledger)
    lm = untrained_student_engine(cfg)
    with run.ledger() as ledger:
        student, _ = measure_student(lm, task, valid, cfg.student.usd_per_hour, cfg.evaluate.batch_size,
                                     min(cfg.evaluate.latency_samples, 10), "untrained student", ledger, "pilot")
    models = {"untrained student": student, "teacher": teacher}
    write_json(run / "pilot.json", {"n": len(sample), "valid": len(valid), "teacher_calls": stats.calls,
                                    "teacher_invalid": stats.invalid, "models": models})
    print_table(f"pilot: {len(valid)} inputs, before training", models)
    gap = (teacher.get("gold_metric") or 0) - (student.get("gold_metric") or 0)
    say(f"pilot: the untrained student agrees with the teacher on {100 * (student['agreement_with_teacher'] or 0):.1f}% "
        + (f"and trails it by {100 * gap:.1f} points on gold" if teacher.get("gold_metric") is not None else ""))
    return {"agreement": student["agreement_with_teacher"], "teacher_calls": stats.calls}
