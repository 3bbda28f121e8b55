"""`potstill curate`: teacher.jsonl into train/val/test, rejected records and a dataset card."""

from __future__ import annotations

from typing import Any

from potstill.config import Config
from potstill.curate import card_markdown, curate
from potstill.errors import PotstillError
from potstill.progress import say
from potstill.records import read_records, write_json, write_jsonl
from potstill.rundir import RunDir
from potstill.stage import run_stage

OUTPUTS = ["train.jsonl", "val.jsonl", "test.jsonl", "rejected.jsonl", "card.json", "card.md"]


def curate_stage(cfg: Config, force: bool = False) -> dict[str, Any]:
    run = RunDir(cfg.run_dir)
    settings = {"curate": cfg.curate.model_dump(), "task": cfg.task.model_dump(),
                "provenance": [cfg.data.source, cfg.data.license, cfg.teacher.terms]}

    def body(run: RunDir) -> dict[str, Any]:
        if not (run / "teacher.jsonl").exists():
            raise PotstillError(f"{run / 'teacher.jsonl'} not found: run `potstill generate` first")
        c = curate(cfg, read_records(run / "teacher.jsonl"))
        for name, rows in (("train", c.train), ("val", c.val), ("test", c.test), ("rejected", c.rejected)):
            write_jsonl(run / f"{name}.jsonl", rows)
        write_json(run / "card.json", c.card)
        (run / "card.md").write_text(card_markdown(c.card))
        counts = c.card["counts"]
        say("curate: " + ", ".join(f"{k}={v}" for k, v in counts.items()))
        if not c.train:
            raise PotstillError("curate: no valid training records left (see rejected.jsonl for the reasons)")
        return counts

    return run_stage("curate", cfg, settings, [run / "teacher.jsonl"], OUTPUTS, body, force)
