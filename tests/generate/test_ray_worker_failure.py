"""A Ray worker that fails (here: the key's variable unset in the workers) is one line, as the
single-process engine's failure is, not the worker's remote traceback."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.generate.loopback import Loopback
from tests.generate.test_generate import PYTHONPATH, SECRET, project


def test_a_failing_ray_worker_is_one_line_naming_the_cause(tmp_path):
    pytest.importorskip("ray")
    env = {k: v for k, v in os.environ.items() if k != "TEACHER_KEY"}
    env.update(PYTHONPATH=PYTHONPATH, RAY_AUTH_MODE="disabled")
    with Loopback(key=SECRET) as srv:
        cfg = project(tmp_path, srv.base_url, 12, None, {"engine": "ray", "ray_workers": 2})
        out = subprocess.run([sys.executable, "-m", "potstill.cli", "generate", "-c", str(cfg)], cwd=tmp_path,
                             env=env, capture_output=True, text=True, timeout=300)
        assert sum(srv.stats()["answered"].values()) == 0
    assert out.returncode == 2
    errors = [ln for ln in out.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "environment variable TEACHER_KEY is not set" in errors[0], out.stderr
    assert "Traceback" not in out.stderr and 'File "' not in out.stderr, out.stderr
    assert "Unhandled error" not in out.stderr, out.stderr  # the other worker's failure is read too
