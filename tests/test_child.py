"""``potstill.child.popen``: a child (engine llamacpp's llama-server) ends when potstill is killed
with SIGKILL, where no exit handler runs; and it does not end when the thread that asked for it
does. Real processes: a Python parent in a subprocess, ``sleep`` as the child."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

PARENT = """
import sys, threading, time
from potstill import child
out = []
t = threading.Thread(target=lambda: out.append(child.popen(["sleep", "300"])))  # a short-lived thread
t.start(); t.join()
print(out[0].pid, flush=True)
time.sleep(300)
"""


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the kernel's parent-death signal is Linux's")
def test_a_child_outlives_its_thread_and_dies_with_a_sigkilled_parent():
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    parent = subprocess.Popen([sys.executable, "-c", PARENT], env=env, stdout=subprocess.PIPE, text=True)
    try:
        pid = int(parent.stdout.readline())
        time.sleep(0.5)
        assert alive(pid), "the child ended with the thread that started it"
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        deadline = time.time() + 10
        while alive(pid) and time.time() < deadline:
            time.sleep(0.05)
        assert not alive(pid), "the child outlived its SIGKILLed parent"
    finally:
        parent.kill()
        if "pid" in locals() and alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_popen_passes_its_arguments_through(tmp_path):
    from potstill import child

    p = child.popen([sys.executable, "-c", "import sys; print(sys.argv[1])", "x"], stdout=subprocess.PIPE, text=True)
    assert p.communicate(timeout=30)[0] == "x\n" and p.returncode == 0
    with pytest.raises(FileNotFoundError):
        child.popen([str(tmp_path / "no-such-binary")])
