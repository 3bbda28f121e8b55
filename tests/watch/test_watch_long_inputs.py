"""`potstill watch` after traffic shifted to inputs longer than the student's context.

Serve sends such a request to the teacher unread by the student (reason ``too_long``): a student
with learned positions (GPT-2 style) cannot embed it. Real parts: a tiny GPT-2 student of 128
positions built from a config, the real teacher server, serve's app under uvicorn, the official
openai client, the run's real calls.sqlite, and the CLI in a subprocess."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys

import openai

from potstill.serve import run_config
from potstill.watch import EXIT_DRIFT, watch_run
from tests.helpers.chat_server import ChatServer
from tests.helpers.live_server import LiveServer
from tests.serve.test_context import gpt2_dir
from tests.watch.conftest import SERVE_KEY, TEACHER_KEY, traffic, write_run


def test_inputs_longer_than_the_students_context_are_judged_not_a_traceback(tmp_path, tiny_model_b, monkeypatch):
    """Found by an audit: watch embedded every request of the window, those the student never read
    too, and a GPT-2-style student failed with an IndexError traceback (index out of range) on the
    first one past its 128 positions: a shift to longer inputs, the drift watch is for, crashed it."""
    from potstill.serve import serve_key
    from potstill.serve.app import build_app
    from potstill.serve.service import load_service

    monkeypatch.setenv("WATCH_TEACHER_KEY", TEACHER_KEY)
    monkeypatch.setenv("WATCH_SERVE_KEY", SERVE_KEY)
    with ChatServer(str(tiny_model_b), api_key=TEACHER_KEY) as teacher:
        run = write_run(tmp_path, gpt2_dir(tmp_path / "gpt2"), teacher.base_url)
        cfg = run_config(run, None)
        service = load_service(run, cfg, device="cpu")
        try:
            with LiveServer(build_app(service, serve_key(cfg))) as live:
                client = openai.OpenAI(base_url=live.url + "/v1", api_key=SERVE_KEY, max_retries=0)
                for i, text in enumerate(traffic("unshifted", 60, seed=3)):
                    long = i % 3 == 0  # every third request 30 times as long: ~180 words past 128 positions
                    raw = client.chat.completions.with_raw_response.create(
                        model="potstill", messages=[{"role": "user", "content": " ".join([text] * 30) if long else text}])
                    assert (raw.headers["x-potstill-reason"] == "too_long") == long
        finally:
            service.close()

    report = watch_run(run, run_config(run, None), device="cpu")
    # By hand from the ledger: who answered each request, oldest first.
    with sqlite3.connect(run / "calls.sqlite") as db:
        rows = db.execute("SELECT role, response FROM calls WHERE stage='serve' ORDER BY id").fetchall()
    escalated = [role == "teacher" for role, _ in rows]
    too_long = sum(json.loads(resp)["reason"] == "too_long" for _, resp in rows)
    assert len(rows) == 60 and too_long == 20
    assert report["traffic"]["n"] == 60 and report["traffic"]["too_long"] == 20
    # The 40 inputs the student read are judged against its training inputs; the 20 it never read are
    # escalations (serve sent them to the teacher), so the escalation share says the shift.
    assert report["checks"]["input"]["n_live"] == 40
    esc = report["checks"]["escalation"]
    assert esc["n"] == 60 and esc["share"] == sum(escalated) / 60 >= 20 / 60
    assert esc["per_window"] == [sum(escalated[i:i + 12]) / 12 for i in range(0, 60, 12)]
    assert esc["flagged"] and report["drift"]
    assert any("20 request(s) longer than the student's context" in n for n in report["notes"])

    env = {**os.environ, "POTSTILL_PROGRESS": "never", "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-m", "potstill.cli", "watch", str(run)], capture_output=True, text=True,
                       env=env, timeout=300)
    assert p.returncode == EXIT_DRIFT and "Traceback" not in p.stderr, p.stderr[-2000:]
    # The terminal says what the input check left out, not report.md alone.
    assert "watch: 20 request(s) longer than the student's context" in p.stderr, p.stderr[-2000:]


def test_a_window_the_student_read_none_of_is_judged_on_its_escalations():
    """Every input past the student's context: no embedding to test, the input check says "not judged"
    in the table and report.md (it needs watch.min_requests rows of its own), and the escalations flag the drift."""
    import torch

    from potstill.config import WatchConfig
    from potstill.watch.stage import judge, markdown

    w = WatchConfig(permutations=299)
    ref = torch.nn.functional.normalize(torch.randn(20, 8), dim=-1)
    out = judge(torch.zeros(0, 8), ref, None, None, [True] * 50, 0.1, w)
    assert out["checks"]["input"]["p_value"] is None and not out["checks"]["input"]["flagged"]
    assert out["drift"] and out["checks"]["escalation"]["flagged"]
    report = {**out, "thresholds": w.model_dump(), "notes": [], "run_dir": "RUN", "student": "s", "created": "now",
              "traffic": {"n": 50, "selection": "latest 200", "first": "a", "last": "b"}}
    assert ("| inputs (MMD) | 0 input(s) within the student's context | - | - | not judged (needs 50: watch.min_requests) "
            "| ok |") in markdown(report)
