"""Progress off a terminal: a long step whose output goes to a pipe (a log) prints plain lines."""

import os
import subprocess
import sys
from pathlib import Path

import potstill

SRC = str(Path(potstill.__file__).resolve().parents[1])  # the potstill under test, for the subprocess
STEP = """
import time
from potstill.progress import bar
with bar("scoring", 4) as advance:
    for i in range(4):
        time.sleep(0.3)
        advance(1, loss=0.5)
"""


def run_step(**env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k != "POTSTILL_PROGRESS"}
    base["PYTHONPATH"] = os.pathsep.join([SRC, base.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-c", STEP], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env={**base, **env}, timeout=60)


def test_a_step_piped_to_a_log_prints_a_line_per_interval_and_one_when_done():
    out = run_step(POTSTILL_PROGRESS_INTERVAL="0.05")
    assert out.returncode == 0, out.stderr
    lines = out.stderr.splitlines()
    assert out.stdout == "" and "\x1b" not in out.stderr  # plain text: no bar, no colour codes
    assert lines and all(ln.startswith("scoring: ") for ln in lines)
    assert any("/4" in ln and "elapsed 0:00:0" in ln for ln in lines[:-1])
    assert lines[-1].startswith("scoring: 4/4 (100%), done in 0:00:0") and lines[-1].endswith("loss=0.5")


def test_never_is_silent_and_always_draws_the_bar():
    assert run_step(POTSTILL_PROGRESS="never", POTSTILL_PROGRESS_INTERVAL="0.05").stderr == ""
    drawn = run_step(POTSTILL_PROGRESS="always").stderr
    assert "scoring" in drawn and "4/4" in drawn


def test_sizes_read_as_a_person_would_say_them():
    """export printed '0 MB of weights' for an 86 kB test model."""
    from potstill.progress import size_text

    assert [size_text(n) for n in (512, 86_000, 1_234_567, 270e6, 3.4e9)] == ["512 B", "86 kB", "1.2 MB", "270 MB", "3.4 GB"]


def test_a_message_that_reads_as_broken_markup_is_printed_not_raised(capsys):
    """``say`` with a path, model name or error text holding "[/x]" (rich's closing-tag form) raised
    MarkupError in its caller: a served request's fallback, a server's reload watcher."""
    from potstill.progress import say

    say("serve: could not load /runs/[a]/student (cannot read d['w'][0] [/x])")
    assert "could not load /runs/[a]/student (cannot read d['w'][0] [/x])" in capsys.readouterr().err
