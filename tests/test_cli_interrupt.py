"""Ctrl-C during a stage: one line saying what a rerun does, exit 130, nothing half-written. The real
CLI in a subprocess, interrupted with SIGINT while curate reads and deduplicates a large file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml
from tests.helpers.cli import sigint_default

ROOT = Path(__file__).resolve().parents[1]


def test_ctrl_c_in_a_stage_says_what_a_rerun_does(tmp_path):
    """Typer turned Ctrl-C into exit 130 with no word (the CLI's own 'interrupted' handler never saw
    it), so curate or evaluate stopped silently and a user could not tell whether anything was kept."""
    run = tmp_path / "run"
    run.mkdir()
    words = ["sports", "match", "team", "phone", "vote", "bank", "film", "music", "goal", "market", "party", "star"]
    with open(run / "teacher.jsonl", "w") as f:
        for i in range(120_000):
            text = " ".join(words[(i * k) % len(words)] for k in range(1, 9)) + f" item {i}"
            f.write(json.dumps({"id": f"r{i}", "messages": [{"role": "user", "content": text}], "output": "sports",
                                "valid": True}) + "\n")
    (tmp_path / "potstill.yaml").write_text(yaml.safe_dump({"run_dir": "run", "task": {"labels": ["sports", "tech"]}}))
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}", "COLUMNS": "400"}
    proc = subprocess.Popen([sys.executable, "-m", "potstill", "curate", "-c", "potstill.yaml"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=sigint_default)
    time.sleep(6)  # reading and deduplicating 120,000 records takes far longer
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    lines = [ln for ln in (out + err).splitlines() if ln.startswith("interrupted")]
    assert len(lines) == 1 and "runs it again" in lines[0], err[-2000:]
    assert "Traceback" not in err
    assert sorted(p.name for p in run.iterdir()) == ["teacher.jsonl"]  # no split, no card, no manifest
