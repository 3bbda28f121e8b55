"""`potstill run`: every stage in order, each skipped when its inputs and settings are unchanged."""

from __future__ import annotations

import time
from typing import Any, Callable

from potstill.config import Config
from potstill.curate.stage import curate_stage
from potstill.evaluate.stage import evaluate_stage
from potstill.generate.stage import generate_stage
from potstill.pilot.stage import pilot_stage
from potstill.records import write_json
from potstill.rundir import RunDir
from potstill.train.stage import train_stage

STAGES: dict[str, Callable[[Config, bool], dict[str, Any]]] = {
    "pilot": pilot_stage,
    "generate": generate_stage,
    "curate": curate_stage,
    "train": train_stage,
    "evaluate": evaluate_stage,
}


def run_all(cfg: Config, skip_pilot: bool = False, force: bool = False) -> dict[str, Any]:
    """Run the stages in order; write each stage's wall time to timings.json in the run directory."""
    results, timings = {}, {}
    for name, fn in STAGES.items():
        if name == "pilot" and skip_pilot:
            continue
        t0 = time.perf_counter()
        results[name] = fn(cfg, force)
        timings[name] = {"seconds": round(time.perf_counter() - t0, 2), "skipped": results[name].get("skipped", False)}
    write_json(RunDir(cfg.run_dir) / "timings.json", timings)
    return {"results": results, "timings": timings}
