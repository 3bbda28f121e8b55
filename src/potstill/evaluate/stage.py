"""`potstill evaluate`: eval.json and a printed three-way table, with a verdict."""

from __future__ import annotations

import json
from typing import Any

from potstill.config import Config
from potstill.errors import PotstillError
from potstill.evaluate import break_even, verdict
from potstill.models.loading import load_lm
from potstill.records import read_records, write_json
from potstill.report import measure_student, measure_teacher, print_table
from potstill.rundir import RunDir
from potstill.stage import run_stage
from potstill.tasks import get_task


def evaluate_stage(cfg: Config, force: bool = False) -> dict[str, Any]:
    run = RunDir(cfg.run_dir)
    e = cfg.evaluate
    settings = {"evaluate": e.model_dump(), "student": cfg.student.model_dump(), "task": cfg.task.model_dump()}

    def body(run: RunDir) -> dict[str, Any]:
        for need in ("test.jsonl", "student"):
            if not (run / need).exists():
                raise PotstillError(f"{run / need} not found: run the stages before evaluate (`potstill run`)")
        task = get_task(cfg.task)
        test = read_records(run / "test.jsonl")
        models: dict[str, dict[str, Any]] = {}
        if e.include_untrained:
            base = load_lm(cfg.student.model)
            models["untrained student"], _ = measure_student(
                base, task, test, cfg.student.usd_per_hour, e.batch_size, e.latency_samples, "untrained student")
            del base
        with run.ledger() as ledger:
            models["teacher"] = measure_teacher(task, test, ledger)
            gen_cost = ledger.summary("teacher")["cost_usd"]
        student = load_lm(str(run / "student"))
        models["student"], _ = measure_student(
            student, task, test, cfg.student.usd_per_hour, e.batch_size, e.latency_samples, "trained student")
        train_info = json.loads((run / "train.json").read_text()) if (run / "train.json").exists() else {}
        train_usd = train_info.get("train_s", 0.0) / 3600 * cfg.student.usd_per_hour
        be = break_even(models["teacher"]["cost_per_1k_calls_usd"] / 1000,
                        models["student"]["cost_per_1k_calls_usd"] / 1000, gen_cost + train_usd, e.monthly_calls)
        be["one_time_source"] = "teacher spend in the ledger + training time x student.usd_per_hour"
        result = {"task": cfg.task.type, "n_test": len(test), "models": models,
                  "verdict": verdict(models, e.quality_bar), "break_even": be}
        write_json(run / "eval.json", result)
        print_table(f"evaluate: {len(test)} held-out inputs", models)
        v = result["verdict"]
        from potstill.progress import say

        say(f"verdict: {'GO' if v['go'] else 'NO-GO'} ({v['reason']})")
        return {"verdict": v["go"], "agreement": models["student"]["agreement_with_teacher"]}

    return run_stage("evaluate", cfg, settings, [run / "test.jsonl", run / "student"], ["eval.json"], body, force)
