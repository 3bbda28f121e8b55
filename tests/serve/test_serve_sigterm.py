"""`potstill serve` stopped with SIGTERM (kill, docker stop, systemd): it shuts down as on Ctrl-C,
closing the service (a llamacpp engine's llama-server child is stopped with it), says so in one
line and exits 143. Before, uvicorn re-raised the signal after its shutdown into Python's default
handler, which ended the process at once: no cleanup ran and the llama-server child was orphaned.
The real CLI in a subprocess, on a tiny run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.serve.conftest import write_run

ROOT = Path(__file__).resolve().parents[2]


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (from /proc)."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(d.name))
    return out


def start_serve(run: Path, *flags: str, env: dict | None = None) -> tuple[subprocess.Popen, list[str]]:
    """``potstill serve RUN FLAGS`` in a subprocess (``env`` over the test keys), read up to its
    "every request is logged" line, or its end: the process and the stderr lines read."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}", "SERVE_KEY": "k", "TEACHER_KEY": "t",
           "POTSTILL_PROGRESS": "never", **(env or {})}
    proc = subprocess.Popen([sys.executable, "-m", "potstill", "serve", str(run), *flags], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    deadline = time.time() + 240
    while time.time() < deadline:
        line = proc.stderr.readline()
        lines.append(line)
        if "every request is logged" in line or not line:
            break
    return proc, lines


def serve_then_terminate(run: Path, *flags: str, env: dict | None = None,
                         sig: int = signal.SIGTERM) -> tuple[subprocess.CompletedProcess, list[int]]:
    proc, lines = start_serve(run, "--port", "0", *flags, env=env)
    kids = children(proc.pid)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, "".join(lines) + err), kids


def test_sigterm_shuts_serve_down_cleanly_with_exit_143(tmp_path, tiny_model):
    run = write_run(tmp_path, tiny_model, "http://127.0.0.1:9/v1")
    p, _ = serve_then_terminate(run)
    assert "every request is logged" in p.stderr, p.stderr[-2000:]
    assert p.returncode == 143, p.stderr[-2000:]
    assert p.stderr.strip().splitlines()[-1] == "terminated: potstill serve stopped"


@pytest.mark.skipif(not os.environ.get("POTSTILL_LLAMA_SERVER"), reason="POTSTILL_LLAMA_SERVER not set")
def test_sigterm_stops_the_llamacpp_engines_server_too(tmp_path):
    from tests.export.conftest import make_bpe_model

    # Free text: a random byte-level model's label scores may start with a stray byte llama-server refuses.
    run = write_run(tmp_path, make_bpe_model(tmp_path / "bpe"), "http://127.0.0.1:9/v1",
                    task={"type": "freetext", "instruction": "name the topic", "max_output_tokens": 4})
    p, kids = serve_then_terminate(run, "--serve.engine", "llamacpp")
    assert p.returncode == 143, p.stderr[-2000:]
    assert kids, "no llama-server child was started"
    assert not running(kids), f"llama-server left running: {running(kids)}"


@pytest.mark.skipif(not os.environ.get("POTSTILL_LLAMA_SERVER"), reason="POTSTILL_LLAMA_SERVER not set")
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the kernel's parent-death signal is Linux's")
def test_sigkill_takes_the_llamacpp_engines_server_with_it(tmp_path):
    """No Python runs on SIGKILL; the kernel ends the child (``potstill.child``)."""
    from tests.export.conftest import make_bpe_model

    run = write_run(tmp_path, make_bpe_model(tmp_path / "bpe"), "http://127.0.0.1:9/v1",
                    task={"type": "freetext", "instruction": "name the topic", "max_output_tokens": 4})
    p, kids = serve_then_terminate(run, "--serve.engine", "llamacpp", sig=signal.SIGKILL)
    left = running(kids)
    for k in left:
        os.kill(k, signal.SIGKILL)
    assert p.returncode == -9, p.stderr[-2000:]
    assert kids, "no llama-server child was started"
    assert not left, f"llama-server left running: {left}"


def running(pids: list[int], wait_s: float = 10) -> list[int]:
    """Those of ``pids`` still running (not gone, not a zombie) after up to ``wait_s``."""
    def up(k: int) -> bool:
        try:
            return "Z" not in Path(f"/proc/{k}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return False

    deadline = time.time() + wait_s
    while any(up(k) for k in pids) and time.time() < deadline:
        time.sleep(0.1)
    return [k for k in pids if up(k)]
