"""`potstill export --format openai-jsonl`: the curated set as OpenAI fine-tuning JSONL."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from potstill.config import Config
from potstill.curate.stage import curate_stage
from potstill.errors import PotstillError
from potstill.export import export
from potstill.records import read_records, write_jsonl
from tests.curate.test_filters import LABELS, _words, rec


def _curated(tmp_path) -> Config:
    run = tmp_path / "run"
    write_jsonl(run / "teacher.jsonl", [rec(_words(500 + i), LABELS[i % 3] + ("." if i % 2 else "")) for i in range(30)])
    cfg = Config(run_dir=str(run), task={"labels": LABELS, "instruction": "Topic?"}, curate={"val": 5, "test": 5})
    curate_stage(cfg)
    return cfg


def test_openai_jsonl_has_instruction_input_and_normalised_target(tmp_path):
    cfg = _curated(tmp_path)
    paths = export(cfg, "openai-jsonl")
    run = tmp_path / "run"
    assert [p.name for p in paths] == ["train.jsonl", "val.jsonl"] and paths[0].parent == run / "export" / "openai-jsonl"
    train = [json.loads(x) for x in paths[0].read_text().splitlines()]
    src = read_records(run / "train.jsonl")
    assert len(train) == len(src) == 20
    for row, r in zip(train, src):
        assert row == {"messages": [{"role": "system", "content": "Topic?"}, {"role": "user", "content": r.text},
                                    {"role": "assistant", "content": r.output.rstrip(".")}]}
    assert len(paths[1].read_text().splitlines()) == 5


def test_unknown_format_and_uncurated_run_fail_clearly_and_write_nothing(tmp_path):
    cfg = Config(run_dir=str(tmp_path / "empty"), task={"labels": LABELS})
    with pytest.raises(PotstillError, match="run `potstill curate` first"):
        export(cfg, "openai-jsonl")
    with pytest.raises(PotstillError, match="unknown export format 'onnx'; available: gguf, gguf-lora, hf, lora, "
                                            "openai-jsonl"):
        export(cfg, "onnx")
    for fmt in ("gguf", "lora", "gguf-lora"):
        with pytest.raises(PotstillError, match="no trained student"):
            export(cfg, fmt)
    assert not (tmp_path / "empty" / "export").exists()


def test_cli_export(tmp_path):
    cfg = _curated(tmp_path)
    (tmp_path / "potstill.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    out = subprocess.run([sys.executable, "-m", "potstill.cli", "export", "-c", "potstill.yaml", "--format", "openai-jsonl",
                          "--out", "ft"], cwd=tmp_path, capture_output=True, text=True, env={**os.environ}, timeout=120)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "ft" / "train.jsonl").exists() and "wrote" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "potstill.cli", "export", "-c", "potstill.yaml", "--format", "onnx"],
                         cwd=tmp_path, capture_output=True, text=True, env={**os.environ}, timeout=120)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "unknown export format" in bad.stderr


def test_curating_after_failed_teacher_calls_says_so(tmp_path, capsys):
    """Found by an audit: `potstill curate` after a generate that stopped on failed calls curated the
    answered records without a word (the failures only counted among the rejected in the card)."""
    run = tmp_path / "run"
    ok = [rec(_words(700 + i), LABELS[i % 3]) for i in range(30)]
    bad = [rec(_words(800 + i), None, valid=False, invalid_reason="teacher error: RateLimitError: 429")
           for i in range(4)]
    write_jsonl(run / "teacher.jsonl", ok + bad)
    curate_stage(Config(run_dir=str(run), task={"labels": LABELS, "instruction": "Topic?"}, curate={"val": 5, "test": 5}))
    err = capsys.readouterr()
    line = [x for x in (err.out + err.err).splitlines() if "failed teacher calls" in x]
    assert len(line) == 1 and "4 of 34" in line[0] and "potstill generate" in line[0], err
