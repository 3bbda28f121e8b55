"""Temp files and folders of writers killed outright (SIGKILL) are removed by the next write of the
same target, and only those: never a live process's, nor one made on another host or in another pid
namespace. Real processes killed in the middle of ``atomic_write`` / ``atomic_dir``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from potstill import leftovers
from potstill.records import atomic_dir, atomic_write

KILLED = """
import os, signal, sys
from pathlib import Path
from potstill.records import atomic_dir, atomic_write
kind, target = sys.argv[1], Path(sys.argv[2])
with (atomic_dir(target) if kind == "dir" else atomic_write(target)) as tmp:
    if kind == "dir":
        (tmp / "model.pt").write_bytes(b"x" * 1000)
    os.kill(os.getpid(), signal.SIGKILL)
"""


def _killed_write(kind: str, target: Path) -> None:
    p = subprocess.run([sys.executable, "-c", KILLED, kind, str(target)], capture_output=True, text=True, timeout=120)
    assert p.returncode == -9, p.stderr


def _hidden(d: Path) -> list[str]:
    return sorted(f.name for f in d.iterdir() if f.name.startswith("."))


def test_the_next_write_removes_a_killed_writers_temp_and_only_that(tmp_path):
    _killed_write("file", tmp_path / "train.jsonl")
    _killed_write("dir", tmp_path / "student")
    killed = _hidden(tmp_path)
    assert len(killed) == 2, killed
    # Look-alikes that must stay: a live process's (this test's parent), another host's or pid
    # namespace's (the same pid may be dead here and alive there), and another target's.
    live = tmp_path / f".train.jsonl.{os.getppid()}.{leftovers.owner().split('.')[1]}.abcd1234.tmp"
    elsewhere = tmp_path / f".train.jsonl.{killed_pid(killed)}.00000000.abcd1234.tmp"
    other = tmp_path / f".val.jsonl.{killed_pid(killed)}.{leftovers.owner().split('.')[1]}.abcd1234.tmp"
    for f in (live, elsewhere, other):
        f.write_text("")
    with atomic_write(tmp_path / "train.jsonl") as f:
        f.write("{}\n")
    with atomic_dir(tmp_path / "student") as d:
        (d / "model.pt").write_bytes(b"")
    assert _hidden(tmp_path) == sorted(f.name for f in (live, elsewhere, other))


def killed_pid(names: list[str]) -> int:
    """The pid a killed writer's temp name carries (.train.jsonl.PID.WHERE.XXXXXXXX.tmp)."""
    return int(next(n for n in names if n.endswith(".tmp")).split(".")[3])


def test_a_checkpoint_save_removes_the_partial_saves_of_killed_runs(tmp_path):
    """A save killed part-way left its temp under its own step's name, which no later save writes again."""
    import random

    import torch

    from potstill.train import checkpoint

    ckpt = tmp_path / "student.ckpt"
    _killed_write("dir", ckpt / "step-00000005")
    _killed_write("dir", ckpt / "step-00000017")
    assert len(_hidden(ckpt)) == 2
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.AdamW(model.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    checkpoint.save(ckpt, 20, "fp", model, opt, sched, random.Random(0), [], {})
    assert sorted(f.name for f in ckpt.iterdir()) == ["step-00000020"]


SIDECAR_KILLED = """
import os, signal, sys
from pathlib import Path
import numpy as np
import safetensors.numpy
from potstill import sidecar
def killed(tensors, tmp, metadata=None):
    Path(tmp).write_bytes(b"x" * 1000)  # half a file, as save_file leaves it when killed
    os.kill(os.getpid(), signal.SIGKILL)
safetensors.numpy.save_file = killed
sidecar.write(Path(sys.argv[1]), {"a": np.zeros(2)}, {"version": 1}, "numpy")
"""


def test_a_sidecar_write_removes_the_temp_of_a_killed_one(tmp_path):
    """A sidecar (int8 calibration, importance matrix) beside the student's weights: a writer killed
    outright left its temp there for good."""
    import numpy as np

    from potstill import sidecar

    target = tmp_path / "imatrix.safetensors"
    p = subprocess.run([sys.executable, "-c", SIDECAR_KILLED, str(target)], capture_output=True, text=True, timeout=120)
    assert p.returncode == -9, p.stderr
    assert len(_hidden(tmp_path)) == 1
    sidecar.write(target, {"a": np.ones(2)}, {"version": 1}, "numpy")
    assert _hidden(tmp_path) == [] and target.exists()


def test_a_killed_write_into_a_new_folder_leaves_its_temp_where_the_next_write_removes_it(tmp_path):
    """atomic_write makes missing folders only at the rename, so the temp of a writer killed before it
    waits in the nearest folder that exists, with no new folder; the next write of the path removes it."""
    target = tmp_path / "new" / "dir" / "records.jsonl"
    _killed_write("file", target)
    left = [p.name for p in tmp_path.iterdir()]
    assert len(left) == 1 and left[0].startswith(".records.jsonl."), left
    with atomic_write(target) as f:
        f.write("{}\n")
    assert _hidden(tmp_path) == [] and target.read_text() == "{}\n"
