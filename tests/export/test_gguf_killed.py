"""`potstill export --format gguf` killed outright (SIGKILL, the OOM killer) while llama.cpp's converter
runs: the converter ends with it, and the next export removes what the killed one left.

The converter used to be a plain ``subprocess.run`` child: it went on writing a GGUF the size of the
model into a hidden folder of RUN/export/ that nothing removed, beside f32 scratch copies in /tmp."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from potstill.config import Config, TaskConfig
from potstill.export import export

LABELS = ["business", "politics", "sports"]


def _converter_of(pid: int) -> int | None:
    """The pid of ``pid``'s child running llama.cpp's converter, if one runs."""
    for d in Path("/proc").iterdir():
        try:
            if d.name.isdigit() and int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid \
                    and b"llama_convert" in (d / "cmdline").read_bytes():
                return int(d.name)
        except (OSError, IndexError, ValueError):
            continue
    return None


def _running(pid: int) -> bool:
    try:
        return (Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]) != "Z"
    except OSError:
        return False


def _sigterm_pending(pid: int) -> bool:
    """Whether ``pid`` has a SIGTERM waiting (its own or its thread group's pending set)."""
    try:
        status = dict(ln.split(":\t", 1) for ln in Path(f"/proc/{pid}/status").read_text().splitlines() if ":\t" in ln)
    except OSError:
        return False
    return any(int(status[k], 16) >> (signal.SIGTERM - 1) & 1 for k in ("SigPnd", "ShdPnd"))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the kernel's parent-death signal is Linux's")
def test_a_killed_gguf_export_takes_its_converter_along_and_leaves_nothing_for_long(bpe_model, tmp_path,
                                                                                     monkeypatch):
    shutil.copytree(bpe_model, tmp_path / "run" / "student")
    (tmp_path / "c.yaml").write_text(f"run_dir: run\ntask:\n  labels: [{', '.join(LABELS)}]\n")
    scratch = tmp_path / "tmp"  # the process's temp folder (TMPDIR), to see what it leaves there
    scratch.mkdir()
    p = subprocess.Popen([sys.executable, "-m", "potstill", "export", "-c", "c.yaml", "--format", "gguf"],
                         cwd=tmp_path, env={**os.environ, "TMPDIR": str(scratch)},
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    conv = None
    try:
        deadline = time.time() + 240
        while conv is None and p.poll() is None and time.time() < deadline:
            conv = _converter_of(p.pid)
            time.sleep(0.02)
        assert conv is not None, p.stderr.read().decode()[-3000:] if p.poll() is not None else "no converter"
        # Held still, so that a converter left running cannot finish the tiny model's file and end on
        # its own before it is looked at; the kernel's SIGTERM then waits in its pending set.
        os.kill(conv, signal.SIGSTOP)
        p.send_signal(signal.SIGKILL)
        p.wait(30)
        deadline = time.time() + 10
        while _running(conv) and not _sigterm_pending(conv) and time.time() < deadline:
            time.sleep(0.05)
        assert not _running(conv) or _sigterm_pending(conv), "the converter outlived its SIGKILLed potstill"
        os.kill(conv, signal.SIGCONT)
        deadline = time.time() + 10
        while _running(conv) and time.time() < deadline:
            time.sleep(0.05)
        assert not _running(conv)
    finally:
        p.kill()
        if conv is not None and _running(conv):
            os.kill(conv, signal.SIGKILL)
    export_dir = tmp_path / "run" / "export"
    assert [f.name for f in export_dir.iterdir() if f.name.startswith(".gguf-")]  # the killed one's temp folder
    assert list(scratch.iterdir())  # and its scratch

    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    export(Config(run_dir=str(tmp_path / "run"), task=TaskConfig(labels=LABELS)), "gguf")
    assert [f.name for f in export_dir.iterdir()] == ["gguf"] and list(scratch.iterdir()) == []
