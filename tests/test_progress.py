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


# The command, then what a download (huggingface_hub) and a weights load (transformers) draw as it runs.
LIBRARY_BARS = """
import sys
from potstill.cli import main
sys.argv = ["potstill", "--help"]
try:
    main()
except SystemExit:
    pass
from huggingface_hub.utils import tqdm
from transformers.utils import logging
for bar in (tqdm(range(3), desc="Fetching 3 files"), logging.tqdm(range(3), desc="Loading weights")):
    for _ in bar:
        pass
"""


def test_the_libraries_bars_stay_out_of_a_log_and_on_a_terminal_with_always():
    """`potstill train ... > log 2>&1` got huggingface_hub's and transformers' tqdm bars in the log, each
    redrawn by carriage returns into one long line, beside potstill's own progress lines."""
    base = {k: v for k, v in os.environ.items() if k not in ("POTSTILL_PROGRESS", "HF_HUB_DISABLE_PROGRESS_BARS")}
    base["PYTHONPATH"] = os.pathsep.join([SRC, base.get("PYTHONPATH", "")])

    def stderr(**env: str) -> str:
        out = subprocess.run([sys.executable, "-c", LIBRARY_BARS], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env={**base, **env}, timeout=120)
        assert out.returncode == 0, out.stderr
        return out.stderr

    assert "Fetching" not in (logged := stderr()) and "Loading weights" not in logged
    drawn = stderr(POTSTILL_PROGRESS="always")  # asked for bars: theirs too
    assert "Fetching 3 files" in drawn and "Loading weights" in drawn
    assert "Fetching 3 files" in stderr(HF_HUB_DISABLE_PROGRESS_BARS="0")  # the user's own setting is kept


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
