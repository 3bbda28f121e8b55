"""`potstill train` stopped after its last step, in the passes after it (int8 calibration, the
importance matrix): the same command keeps the trained student and runs only those passes.

The checkpoints used to go as soon as the weights were saved, so a Ctrl-C or a kill there (minutes
on a large student) lost the whole training: the rerun trained from step 0, and meanwhile
RUN/student held the new weights beside the old training's train.json, which export's card told of."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from potstill.hashing import hash_path
from tests.helpers.cli import run_main, sigint_default
from tests.helpers.train_run import train_run

WORKER = Path(__file__).with_name("calibration_kill_worker.py")
ROOT = Path(__file__).resolve().parents[2]
# The worker imports this checkout's potstill (src/ first) from the test's own folder, installed or not.
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH", "")])}


@pytest.fixture
def work(tmp_path, monkeypatch, tiny_model):
    monkeypatch.chdir(tmp_path)
    return train_run(tmp_path, tiny_model, "  int8_calibration: 4\n  epochs: 2\n  batch_size: 2\n")


@pytest.mark.parametrize("sig,checkpoint_every", [("INT", 0), ("KILL", 1)])
def test_a_stop_in_the_calibration_keeps_the_training(work, monkeypatch, capsys, sig, checkpoint_every):
    (work / "run" / "train.json").write_text('{"steps": 999}\n')  # an earlier training's
    p = subprocess.run([sys.executable, str(WORKER), sig, "train", "-c", "c.yaml",
                        "--train.checkpoint_every", str(checkpoint_every)],
                       capture_output=True, text=True, timeout=300, preexec_fn=sigint_default, env=ENV)
    assert p.returncode == (130 if sig == "INT" else -9), p.stderr[-3000:]
    if sig == "INT":
        assert ("train: interrupted after the training finished; the same command keeps the trained student and "
                "runs only the passes after it") in p.stderr
    run = work / "run"
    # The old train.json no longer stands beside the new student.
    assert not (run / "train.json").exists() and (run / "student" / "config.json").exists()
    weights, curve = hash_path(run / "student" / "model.safetensors"), (run / "metrics.jsonl").read_text()

    code, err = run_main(monkeypatch, capsys, "train", "-c", "c.yaml", "--train.checkpoint_every", str(checkpoint_every))
    assert code == 0, err
    assert any("train: the training had finished (step 4) when the run was stopped" in ln for ln in err), err
    summary = json.loads((run / "train.json").read_text())
    assert summary["steps"] == 4 and summary["resumed_from_step"] == 4 and summary["int8_calibration"]
    # Not trained again: the same curve (elapsed_s included) and the same weights, now calibrated.
    assert (run / "metrics.jsonl").read_text() == curve
    assert hash_path(run / "student" / "model.safetensors") == weights
    assert (run / "student" / "int8_calibration.safetensors").exists()
    assert not (run / "student.ckpt").exists()  # dropped once the stage is marked done

    # Done: --force trains again, from step 0.
    code, err = run_main(monkeypatch, capsys, "train", "-c", "c.yaml", "--force")
    assert code == 0 and json.loads((run / "train.json").read_text())["resumed_from_step"] is None, err
