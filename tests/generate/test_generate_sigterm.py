"""SIGTERM (``kill``, ``docker stop``) to generate with an API teacher takes Ctrl-C's path: the
interrupt line, the closing line, exit 143, and no asyncio traceback.

The handler raised its exception in whichever task step of the event loop was running; that task
kept it, and asyncio printed "Task exception was never retrieved" and some 40 lines of traceback
after the closing line, in most runs. Where SIGINT is ignored, as in a background job of a
non-interactive shell, asyncio.run takes no Ctrl-C, and the traceback stayed until potstill cancelled
its own main task."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.generate.loopback import Loopback
from tests.helpers.cli import sigint_default

WORKER = Path(__file__).with_name("sigterm_worker.py")


def sigint_ignored() -> None:
    """``Popen(preexec_fn=...)``: SIGINT ignored, as ``cmd &`` in a script leaves it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.mark.parametrize("sigint", [sigint_default, sigint_ignored], ids=["sigint-default", "sigint-ignored"])
def test_sigterm_during_requests_is_the_one_line_of_ctrl_c(tmp_path, sigint):
    (tmp_path / "inputs.jsonl").write_text("".join(json.dumps({"id": f"r{i}", "input": f"item {i} text"}) + "\n"
                                                   for i in range(200)))
    with Loopback(key="sk-test-123") as srv:
        (tmp_path / "potstill.yaml").write_text(yaml.safe_dump({
            "run_dir": "run", "data": {"inputs": "inputs.jsonl"},
            "task": {"type": "classification", "labels": ["sports", "tech", "politics", "business", "film"]},
            "teacher": {"type": "openai", "model": "gpt-4o-mini", "base_url": srv.base_url,
                        "api_key_env": "TEACHER_KEY", "concurrency": 8, "max_tokens": 4}}))
        p = subprocess.run([sys.executable, str(WORKER), "generate", "-c", "potstill.yaml"], cwd=tmp_path,
                           env={**os.environ, "TEACHER_KEY": "sk-test-123", "COLUMNS": "300"},
                           capture_output=True, text=True, timeout=300, preexec_fn=sigint)
    assert p.returncode == 143, p.stderr[-3000:]
    assert "Task exception was never retrieved" not in p.stderr and "Traceback" not in p.stderr, p.stderr[-3000:]
    assert any(ln.startswith("generate: interrupted;") for ln in p.stderr.splitlines()), p.stderr[-3000:]
    closing = [ln for ln in p.stderr.splitlines() if ln.startswith("terminated")]
    assert len(closing) == 1 and closing[0].startswith("terminated: artifacts are written whole"), p.stderr[-3000:]
    assert not (tmp_path / "run" / "teacher.jsonl").exists()
