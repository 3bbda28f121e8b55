"""``atomic_dir`` with two writers of one folder at once (two `potstill export` of one run), and a
writer killed between its steps. Real processes on a real folder; "no exchange" is a file system
without ``renameat2(RENAME_EXCHANGE)``, where the old folder is renamed aside first."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from potstill.records import atomic_dir

WRITER = """
import json, os, sys, time
from pathlib import Path
from potstill import atomic
target, exchange, start = Path(sys.argv[1]), sys.argv[2] == "1", float(sys.argv[3])
if not exchange:
    atomic.exchange = lambda a, b: False
while time.time() < start:
    pass
failed = []
for i in range(60):
    try:
        with atomic.atomic_dir(target) as tmp:
            for k in range(10):
                (tmp / f"shard{k}.bin").write_bytes(b"x" * 20000)
            (tmp / "config.json").write_text(json.dumps({"pid": os.getpid(), "i": i}))
    except Exception as e:
        failed.append(f"{type(e).__name__}: {e}")
print(json.dumps(failed))
"""


@pytest.mark.parametrize("exchange", [True, False], ids=["exchange", "no exchange"])
def test_two_writers_of_one_folder_both_finish_and_leave_one_whole(tmp_path, exchange):
    """The old folder was deleted and the new one renamed in after: the other writer's rename landing
    between the two failed with 'Directory not empty', and its delete with FileNotFoundError."""
    target = tmp_path / "export" / "hf"
    with atomic_dir(target) as d:
        (d / "config.json").write_text("{}")
    start = time.time() + 2  # both loaded, then writing at one instant
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(target), "1" if exchange else "0", str(start)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    missing = 0
    while any(p.poll() is None for p in procs):
        missing += not target.is_dir()
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
        assert json.loads(out) == [], out
    # One writer's folder, whole, and nothing else beside it: every old folder moved out was deleted.
    assert sorted(os.listdir(target)) == ["config.json"] + [f"shard{k}.bin" for k in range(10)]
    assert json.loads((target / "config.json").read_text())["i"] == 59  # the last write to finish stays
    assert os.listdir(target.parent) == ["hf"]
    if exchange:
        assert missing == 0  # exchanged in one call: at every instant the path named a whole folder


KILLED = """
import os, signal, sys
from pathlib import Path
from potstill import atomic
target, at = Path(sys.argv[1]), sys.argv[2]
if at == "after exchange":  # the old folder swapped out, not yet deleted
    atomic._remove = lambda path: os.kill(os.getpid(), signal.SIGKILL)
else:  # no exchange: the old folder renamed aside, the new one not yet in
    atomic.exchange = lambda a, b: False
    replace, calls = os.replace, []
    def second_rename_stopped(src, dst):
        calls.append(src)
        if len(calls) == 2:
            if at == "between the renames":
                os.kill(os.getpid(), signal.SIGKILL)
            raise KeyboardInterrupt  # Ctrl-C
        replace(src, dst)
    os.replace = second_rename_stopped
with atomic.atomic_dir(target) as tmp:
    (tmp / "config.json").write_text("new")
"""


@pytest.mark.parametrize("at", ["after exchange", "between the renames", "ctrl-c between the renames"])
def test_a_writer_killed_between_its_steps_leaves_what_the_next_write_clears(tmp_path, at):
    target = tmp_path / "student"
    with atomic_dir(target) as d:
        (d / "config.json").write_text("old")
    p = subprocess.run([sys.executable, "-c", KILLED, str(target), at], capture_output=True, text=True, timeout=120)
    if at.startswith("ctrl-c"):
        # Stopped with its cleanup: the old folder is put back, the new one removed.
        assert "KeyboardInterrupt" in p.stderr, p.stderr
        assert os.listdir(tmp_path) == ["student"] and (target / "config.json").read_text() == "old"
        return
    assert p.returncode == -9, p.stderr
    hidden = sorted(f.name for f in tmp_path.iterdir() if f.name.startswith("."))
    if at == "after exchange":
        # The new folder is in place; the old one waits under the killed writer's temp name.
        assert (target / "config.json").read_text() == "new"
        assert len(hidden) == 1 and (tmp_path / hidden[0] / "config.json").read_text() == "old"
    else:
        # A gap of one rename: neither folder is lost, both under the killed writer's temp names.
        assert not target.exists()
        assert sorted((tmp_path / h / "config.json").read_text() for h in hidden) == ["new", "old"]
    with atomic_dir(target) as d:
        (d / "config.json").write_text("next")
    assert os.listdir(tmp_path) == ["student"] and (target / "config.json").read_text() == "next"
