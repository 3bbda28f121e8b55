"""Ctrl-C during ``generate.engine: batch``: the line says the batches stay open at the provider and
that the same command collects them. It said '0 new answers are in the ledger, so the same command
sends only the other N requests', counting none of the answers the batch engine had committed and
suggesting that the requests held (and billed) by the open batches would be sent again."""

from __future__ import annotations

import signal
import subprocess
import sys

from tests.generate.loopback import committed_answers
from tests.helpers.cli import sigint_default
from tests.generate.test_batch import _submitted, _wait, cli, cli_env, project
from tests.generate.test_generate import check_output
from tests.helpers.batch_server import BatchLoopback


def test_ctrl_c_during_a_batch_run_says_the_same_command_collects_the_open_batches(tmp_path):
    n = 30
    with BatchLoopback(key="sk-batch-5e4d3c2b1a09f8e7", latency=600) as srv:  # the batches stay open
        cfg_path = project(tmp_path, srv, "openai", n, {"batch_max_requests": 20})
        db = tmp_path / "run" / "calls.sqlite"
        cmd = [sys.executable, "-m", "potstill.cli", "generate", "-c", str(cfg_path)]
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, preexec_fn=sigint_default)
        _wait(lambda: _submitted(db) == 2, proc)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 130, err[-2000:]
        said = [ln for ln in (out + err).splitlines() if "interrupted" in ln]
        assert said, err[-2000:]
        assert "0 new answers are in the ledger" in said[0] and "2 open openai batches" in said[0], said[0]
        assert "collects" in said[0] and "sends" not in said[0], said[0]
        srv.set_latency(0)
        again = cli(["generate", "-c", str(cfg_path)], tmp_path)
        assert again.returncode == 0, again.stderr[-2000:]
        stats = srv.stats()
    check_output(tmp_path / "run" / "teacher.jsonl", n)
    assert committed_answers(db) == n and set(stats["submissions"].values()) == {1}
    assert stats["created"] == {"openai": 2}  # the same two batches, collected
