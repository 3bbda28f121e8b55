"""generate.engine ray on a host where a Ray cluster already runs (`ray start --head`, Ray's own
setup). ``ray.init(num_cpus=...)`` raises ValueError when it joins an existing cluster, and the run
ended with a Python traceback, whether RAY_ADDRESS named the cluster or ray.init found it.

The cluster is this test's own: its bootstrap file lives under its own RAY_TMPDIR (so no other
process on the host finds it) and it is stopped through the pid of its `ray start --block`."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.generate.loopback import Loopback
from tests.generate.test_generate import PYTHONPATH, SECRET, check_output, project


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_head():
    pytest.importorskip("ray")
    # Short: Ray's unix sockets live under it, and a socket path may hold 107 bytes.
    tmp = Path(tempfile.mkdtemp(prefix="rh", dir="/tmp"))
    port = _free_port()
    # The cluster's workers read the environment it was started with, the teacher's key included.
    env = {**os.environ, "RAY_TMPDIR": str(tmp), "RAY_AUTH_MODE": "disabled", "TEACHER_KEY": SECRET,
           "PYTHONPATH": PYTHONPATH, "RAY_USAGE_STATS_ENABLED": "0"}
    ray_cli = Path(sys.executable).with_name("ray")
    head = subprocess.Popen([str(ray_cli), "start", "--head", "--block", "--num-cpus=2", f"--port={port}",
                             "--include-dashboard=false", f"--ray-client-server-port={_free_port()}",
                             f"--dashboard-agent-listen-port={_free_port()}", "--disable-usage-stats"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while not (tmp / "ray" / "ray_current_cluster").exists() and head.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    try:
        assert (tmp / "ray" / "ray_current_cluster").exists(), "ray start --head did not come up"
        yield {"env": env, "address": f"127.0.0.1:{port}"}
    finally:
        head.send_signal(signal.SIGTERM)  # --block: it stops the processes it started
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.mark.parametrize("given", [False, True], ids=["found", "RAY_ADDRESS"])
def test_generate_joins_a_ray_cluster_already_running(tmp_path, ray_head, given):
    env = {**ray_head["env"], **({"RAY_ADDRESS": ray_head["address"]} if given else {}), "COLUMNS": "400",
           "POTSTILL_PROGRESS": "auto", "POTSTILL_PROGRESS_INTERVAL": "0.1"}  # progress lines in a run of seconds
    with Loopback(key=SECRET) as srv:
        cfg = project(tmp_path, srv.base_url, 20, None, {"engine": "ray", "ray_workers": 2})
        out = subprocess.run([sys.executable, "-m", "potstill.cli", "generate", "-c", str(cfg)], cwd=tmp_path,
                             env=env, capture_output=True, text=True, timeout=300)
        answered = sum(srv.stats()["answered"].values())
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    # One progress line, the Ray workers' own: an outer one that no worker advanced read 0/20 done.
    done = [ln for ln in out.stderr.splitlines() if ", done in " in ln]
    assert len(done) == 1 and "teacher gpt-4o-mini on 2 Ray workers: 20/20" in done[0], done
    check_output(tmp_path / "run" / "teacher.jsonl", 20)
    assert answered == 20
