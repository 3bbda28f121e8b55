"""A calls.sqlite SQLite cannot open at all (a directory in its place, as a bad volume mount leaves
it): `potstill watch` and `potstill redistill` said "error: SQLite: disk I/O error" / "unable to open
database file", naming no file, where every other unreadable file is named in the one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml


@pytest.mark.parametrize("verb", ["watch", "redistill"])
def test_a_ledger_sqlite_cannot_open_is_named_in_the_one_line(tmp_path, tiny_model, verb):
    import shutil

    run = tmp_path / "run"
    run.mkdir()
    shutil.copytree(tiny_model, run / "student")
    for split in ("train", "val", "test"):
        (run / f"{split}.jsonl").write_text(json.dumps({"messages": [{"role": "user", "content": "the match"}],
                                                        "output": "sports"}) + "\n")
    (run / "potstill.yaml").write_text(yaml.safe_dump({"run_dir": ".", "task": {"type": "classification",
                                                                                 "labels": ["sports", "tech"]}}))
    (run / "calls.sqlite").mkdir()
    env = {**os.environ, "POTSTILL_PROGRESS": "never", "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-m", "potstill.cli", verb, str(run)], capture_output=True, text=True,
                       env=env, timeout=300)
    err = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(err) == 1, p.stderr[-2000:]
    assert err[0].startswith(f"error: {run / 'calls.sqlite'}: SQLite: "), err
