"""Room on disk checked before training: a run whose student (and checkpoints) cannot fit on the run
folder's file system stops before its first step, in one line naming what it needs, what is free and
the folder, where it used to train to the end and then lose the student to a full disk.

The sums are checked on a tiny student built from a config (its exact parameter count), and the CLI
path with the file system's free space read as less than that: shutil.disk_usage replaced in-process,
as no test can fill a real disk to a given byte count."""

from __future__ import annotations

import shutil
from collections import namedtuple

import pytest

from potstill.config import TrainConfig
from potstill.train.space import bytes_needed, lora_parameters, size_text, training_needs
from tests.helpers.cli import run_main
from tests.helpers.train_run import train_run

Usage = namedtuple("Usage", "total used free")


def test_what_a_training_writes_at_most():
    # A 135M fp32 student: 540 MB; a save holds weights and AdamW's two moments, and two saves sit
    # together while the newer is written (more than one save and the student).
    assert bytes_needed(135_000_000, 135_000_000, 4, 0, False, False) == {
        "student": 540_000_000, "checkpoint": 0, "total": 540_000_000}
    assert bytes_needed(135_000_000, 135_000_000, 4, 100, False, False)["total"] == 2 * 3 * 540_000_000
    assert bytes_needed(135_000_000, 135_000_000, 4, 100, True, False)["checkpoint"] == 4 * 540_000_000
    # LoRA: the adapter alone is saved, and a save is of the adapters (a large student, a small one).
    lora = bytes_needed(1_000_000_000, 1_000_000, 4, 10, False, True)
    assert lora == {"student": 4_000_000, "checkpoint": 12_000_000, "total": 24_000_000}
    assert [size_text(n) for n in (512, 3_400_000, 1_270_000_000)] == ["512 B", "3.4 MB", "1.27 GB"]


def test_the_sums_read_the_students_own_parameters(tiny_model):
    from potstill.models.loading import load_lm

    model = load_lm(str(tiny_model), device="cpu").model
    total = sum(p.numel() for p in model.parameters())
    full = training_needs(model, TrainConfig(checkpoint_every=5))
    assert full == {"student": 4 * total, "checkpoint": 12 * total, "total": 24 * total}
    linears = [m for name, m in model.named_modules()
               if isinstance(m, __import__("torch").nn.Linear) and m is not model.get_output_embeddings()]
    assert linears and lora_parameters(model, 8, "all-linear") == sum(8 * (m.in_features + m.out_features)
                                                                      for m in linears)
    q = [m for name, m in model.named_modules() if name.endswith("q_proj")]
    assert lora_parameters(model, 8, ["q_proj"]) == sum(8 * (m.in_features + m.out_features) for m in q)
    adapter = training_needs(model, TrainConfig(method="lora", lora_r=8))
    assert adapter["student"] == 4 * lora_parameters(model, 8, "all-linear") < full["student"]


def test_train_stops_before_its_first_step_where_the_student_does_not_fit(tmp_path, tiny_model, monkeypatch,
                                                                          capsys):
    work = train_run(tmp_path, tiny_model, "  int8_calibration: 0\n  max_steps: 4\n  batch_size: 2\n"
                                           "  checkpoint_every: 2\n")
    monkeypatch.chdir(work)
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: Usage(10**9, 10**9 - 1000, 1000))
    code, err = run_main(monkeypatch, capsys, "train", "-c", "c.yaml")
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("error: train: run has 1 kB free, and this training writes up to "), err
    assert ("there (the student " in err[0] and "and checkpoints of" in err[0]
            and err[0].endswith("free space there, or set run_dir on a larger disk, and run the same command again"))
    # Before any step: no curve, no checkpoint, no student.
    assert sorted(p.name for p in (work / "run").iterdir()) == ["train.jsonl"]
    monkeypatch.setattr(shutil, "disk_usage", real)
    code, err = run_main(monkeypatch, capsys, "train", "-c", "c.yaml")
    assert code == 0, err
    assert (work / "run" / "student").is_dir()
