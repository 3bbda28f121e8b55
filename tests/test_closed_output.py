"""potstill's output closed (`>&-`) or its reader gone (`potstill run | head -1`): the command runs, or
stops quietly once the stage it was in is recorded, never half-recorded."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import yaml

from potstill import progress
from potstill.ledger import Call, Ledger
from tests.helpers.cli import run_main

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH", "")])}


def test_a_closed_stdout_is_not_a_traceback_at_import(tmp_path):
    """`potstill cost RUN >&-` (a daemon, some cron setups): Python starts with sys.stdout None, and
    progress.py's `sys.stdout.isatty()` at import was an AttributeError before any command ran."""
    with Ledger(tmp_path / "calls.sqlite") as led:
        led.record(Call("h", "teacher", "generate", "m", {"x": 1}, {"output": "a"}, 20, 1, cost_usd=0.001))
    p = subprocess.run([sys.executable, "-m", "potstill", "cost", str(tmp_path)], capture_output=True, text=True,
                       env=ENV, timeout=120, preexec_fn=lambda: os.close(1))
    assert (p.returncode, p.stderr) == (0, ""), p.stderr[-2000:]


def test_a_reader_that_goes_away_stops_the_command_once_the_stage_is_recorded(tmp_path, monkeypatch, capsys,
                                                                              tiny_model):
    """`potstill run | head -1`: head had its line and left, and evaluate's table found the pipe closed.
    Rich ended the process with exit 1 and no word, after eval.json was written but before evaluate was
    marked done, so the next run evaluated again. The stage now finishes and is recorded, and the
    command stops quietly with SIGPIPE's 141, as `head` expects of a writer."""
    run = tmp_path / "run"
    run.mkdir()
    shutil.copytree(tiny_model, run / "student")
    texts = ["the team won the match", "new phone software", "a goal to win", "the internet and a computer"]
    recs = [{"input": t, "output": ["sports", "tech"][i % 2], "meta": {"request_hash": f"h{i}"}}
            for i, t in enumerate(texts)]
    (run / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    with Ledger(run / "calls.sqlite") as ledger:
        for i in range(len(texts)):
            ledger.record(Call(f"h{i}", "teacher", "generate", "m", {"i": i}, {"output": "x"}, cost_usd=0.01))
    (tmp_path / "replay.jsonl").write_text(json.dumps({"messages": [{"role": "user", "content": "x"},
                                                                     {"role": "assistant", "content": "y"}]}) + "\n")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({
        "run_dir": "run", "task": {"labels": ["sports", "tech"]},
        "teacher": {"type": "replay", "model": "m", "replay_path": "replay.jsonl", "price": {"usd_per_call": 0.02}},
        "student": {"model": str(run / "student")},
        "evaluate": {"latency_samples": 2, "batch_size": 4, "include_untrained": False}}))
    monkeypatch.chdir(tmp_path)
    r, w = os.pipe()
    os.close(r)  # the reader is gone before the table comes
    monkeypatch.setattr(sys, "stdout", os.fdopen(w, "w"))
    monkeypatch.setattr(progress, "_unread", threading.Event(), raising=False)  # (a fresh one: none is set)
    monkeypatch.setattr(progress.out, "quiet", False)  # (put back after: the broken pipe silences it)
    code, err = run_main(monkeypatch, capsys, "evaluate", "-c", "c.yaml")
    assert code == 141 and not any("Traceback" in ln or "Error" in ln for ln in err), err
    assert "evaluate" in json.loads((run / "manifest.json").read_text())["stages"]
    assert (run / "eval.json").exists()


def test_a_reader_that_goes_away_from_cost_or_requests_stops_them_quietly(tmp_path, monkeypatch, capsys):
    """`potstill cost RUN | head -1`: its lines went through click's echo, which ends a command whose pipe
    closed with exit 1 and no word, while the stage commands stop with SIGPIPE's 141; a script telling "the
    reader left" from "it failed" by the exit code read cost and requests as failures."""
    with Ledger(tmp_path / "calls.sqlite") as led:
        led.record(Call("h", "teacher", "generate", "m", {"x": 1}, {"output": "a"}, 20, 1, cost_usd=0.001))
    for args in (["cost", str(tmp_path)], ["requests", str(tmp_path)]):
        r, w = os.pipe()
        os.close(r)  # the reader is gone before the first line
        monkeypatch.setattr(sys, "stdout", os.fdopen(w, "w"))
        monkeypatch.setattr(progress, "_unread", threading.Event(), raising=False)
        monkeypatch.setattr(progress.out, "quiet", False)
        code, err = run_main(monkeypatch, capsys, *args)
        assert (code, err) == (141, []), (args, err)
        sys.stdout.close()  # what was left unwritten goes to /dev/null, in the pipe's place: no error
