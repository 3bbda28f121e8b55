"""`potstill serve RUN` on a student it cannot load: one line and exit 2, as a hot swap refuses the
same student with a 409 (``_load_live``), not a traceback and exit 1. Real files: the tiny student
with its weights cut short as a full disk leaves them, or a config.json that no longer fits them;
the real CLI entry point."""

from __future__ import annotations

import json
import os

import pytest

from tests.helpers.cli import run_main
from tests.serve.conftest import TEACHER_KEY, write_run


@pytest.mark.parametrize("damage", ["cut", "config"])
def test_a_student_that_cannot_load_is_one_line_and_exit_2(damage, tmp_path, tiny_model, monkeypatch, capsys):
    monkeypatch.setenv("TEACHER_KEY", TEACHER_KEY)
    run = write_run(tmp_path, tiny_model, "http://127.0.0.1:9/v1")  # the teacher is never called
    student = run / "student"
    if damage == "cut":
        os.truncate(student / "model.safetensors", 1000)
        why = "SafetensorError: Error while deserializing header: "
    else:  # weights of another shape than the config's: the header reads, the load fails
        cfg = json.loads((student / "config.json").read_text())
        (student / "config.json").write_text(json.dumps({**cfg, "intermediate_size": cfg["intermediate_size"] // 2}))
        why = "RuntimeError: "
    code, err = run_main(monkeypatch, capsys, "serve", str(run), "--port", "0", "--api-key-env", "")
    assert code == 2 and len(err) == 1 and err[0].startswith(f"error: cannot load {student.resolve()}: {why}"), err
