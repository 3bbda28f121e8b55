"""Weights that do not fit (a full disk, a quota, `ulimit -f`): one `error:` line naming the folder and
the problem, and what a rerun does, where torch's zip writer ('unexpected pos 170112 vs 170064') and
safetensors ('SafetensorError: ... No space left on device') were a traceback.

The disk is filled by a limit on a file's size (RLIMIT_FSIZE with SIGXFSZ ignored, as `ulimit -f` in
a shell): every write past it fails with EFBIG, as a full disk fails with ENOSPC, through the same
code. The tiny student's model.safetensors is 87 KB; the limit is 40 KB."""

from __future__ import annotations

import contextlib
import resource
import shutil
import signal

import pytest

from tests.helpers.cli import run_main
from tests.helpers.train_run import train_run

LIMIT = 40_000


@contextlib.contextmanager
def file_size_limit(n: int):
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (n, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)


@pytest.fixture
def work(tmp_path, monkeypatch, tiny_model):
    monkeypatch.chdir(tmp_path)
    return train_run(tmp_path, tiny_model, "  int8_calibration: 0\n  max_steps: 4\n  batch_size: 2\n")


def _left(run) -> list[str]:
    return sorted(p.name for p in run.iterdir())


def test_a_student_that_does_not_fit_says_the_training_is_lost_in_one_line(work, monkeypatch, capsys):
    """checkpoint_every 0 (the default): the trained weights were only in memory, and a traceback said
    nothing of them. The line says the training finished, where the write failed, and that a rerun
    trains again (no checkpoint to resume from); no temp folder is left."""
    with file_size_limit(LIMIT):
        code, err = run_main(monkeypatch, capsys, "train", "-c", "c.yaml")
    assert code == 2 and err == [
        "error: train: the training finished (4 steps) but its student could not be saved: File too large: "
        "run/student; lift the limit on a file's size (`ulimit -f`) or write to another file system, then: no "
        "checkpoint was saved yet (train.checkpoint_every), so a rerun starts over"], err
    assert _left(work / "run") == ["metrics.jsonl", "train.jsonl"]


def test_a_checkpoint_that_does_not_fit_is_one_line_naming_it(work, monkeypatch, capsys):
    with file_size_limit(LIMIT):
        code, err = run_main(monkeypatch, capsys, "train", "-c", "c.yaml", "--train.checkpoint_every", "2")
    assert code == 2 and err == [
        "error: train: stopped after 2 of 4 steps: File too large: run/student.ckpt/step-00000002; lift the limit "
        "on a file's size (`ulimit -f`) or write to another file system, then: no checkpoint was saved yet "
        "(train.checkpoint_every), so a rerun starts over"], err
    assert not list((work / "run" / "student.ckpt").iterdir())  # the temp folder of the failed save is gone


def test_an_export_that_does_not_fit_is_one_line_naming_its_folder(work, monkeypatch, capsys, tiny_model):
    shutil.copytree(tiny_model, work / "run" / "student")
    with file_size_limit(LIMIT):
        code, err = run_main(monkeypatch, capsys, "export", "-c", "c.yaml", "--format", "hf")
    assert code == 2 and err == ["error: File too large: run/export/hf; lift the limit on a file's size (`ulimit -f`) "
                                 "or write to another file system and run the same command again"], err
    assert _left(work / "run" / "export") == []


def test_a_text_artifact_that_does_not_fit_names_its_file(tmp_path):
    """teacher.jsonl on a full disk said only '[Errno 28] No space left on device': a failed write()
    names no file."""
    from potstill.records import write_jsonl

    with file_size_limit(LIMIT), pytest.raises(OSError) as e:
        write_jsonl(tmp_path / "teacher.jsonl", ({"input": "x" * 1000} for _ in range(100)))
    assert e.value.filename == str(tmp_path / "teacher.jsonl") and list(tmp_path.iterdir()) == []
