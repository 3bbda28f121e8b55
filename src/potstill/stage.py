"""What every stage runner shares: reading the inputs and the skip-if-done check."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from potstill.config import Config
from potstill.errors import PotstillError
from potstill.progress import say
from potstill.records import Record, read_numbered
from potstill.rundir import RunDir
from potstill.tasks import get_task


def load_inputs(cfg: Config) -> list[Record]:
    """The inputs, gold labels checked against the task's label set (see ``Task.check_gold``)."""
    numbered = read_numbered(cfg.data.inputs)
    if cfg.data.limit is not None:
        numbered = numbered[: cfg.data.limit]
    if not numbered:
        raise PotstillError(f"{cfg.data.inputs}: no records")
    get_task(cfg.task).check_gold(numbered, cfg.data.inputs, cfg.data.max_unknown_gold)
    return [r for _, r in numbered]


def run_stage(name: str, cfg: Config, settings: Any, inputs: list[str | Path], outputs: list[str],
              body: Callable[[RunDir], dict[str, Any]], force: bool = False) -> dict[str, Any]:
    """Run ``body`` unless the manifest says the same settings and inputs already produced ``outputs``."""
    run = RunDir(cfg.run_dir)
    fp = run.fingerprint(name, settings, inputs)
    if not force and run.is_done(name, fp):
        say(f"[dim]{name}: up to date, skipped[/dim]")
        return {"skipped": True, **run.manifest()["stages"][name].get("summary", {})}
    summary = body(run)
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun / accelerate launch, one process records
        run.mark_done(name, fp, outputs, {"summary": summary})
    return {"skipped": False, **summary}
