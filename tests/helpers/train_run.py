"""A run ready for `potstill train` alone: a replay teacher (no calls), the tiny student, and four
labelled training records, for tests of what train does around its steps (stops, full disks, refusals)."""

from __future__ import annotations

from pathlib import Path

ROWS = [("the team won the match", "sports"), ("new phone software", "tech"),
        ("a late goal to win", "sports"), ("the internet and a computer", "tech")]


def train_run(tmp_path: Path, tiny_model: str, train: str, records: bool = True) -> Path:
    """c.yaml (``train``: the YAML lines under ``train:``, each ending in a newline), in.jsonl and
    run/train.jsonl in ``tmp_path`` (``records`` False: run/ left empty); returns ``tmp_path``."""
    from potstill.records import Record, write_jsonl

    (tmp_path / "c.yaml").write_text(f"task:\n  labels: [sports, tech]\ndata:\n  inputs: in.jsonl\nteacher:\n"
                                     f"  type: replay\n  model: x\nrun_dir: run\nstudent:\n  model: {tiny_model}\n"
                                     f"train:\n{train}export:\n  imatrix_inputs: 0\n", encoding="utf-8")
    (tmp_path / "in.jsonl").write_text('{"input": "the match"}\n', encoding="utf-8")
    (tmp_path / "run").mkdir(exist_ok=True)
    if records:
        write_jsonl(tmp_path / "run" / "train.jsonl",
                    [Record(messages=[{"role": "user", "content": t}], output=lab, label=lab) for t, lab in ROWS])
    return tmp_path
