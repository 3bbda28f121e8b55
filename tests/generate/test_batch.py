"""``generate.engine: batch`` against a loopback batch API (tests/helpers/batch_server.py, its own
process) for both providers, through the official SDK clients, with expiry, partial failure,
lost and malformed results, quota refusals and real ``kill -9``s.

The server counts how many times each ``custom_id`` went into a created batch: that is the proof
that nothing was submitted (and so paid for) twice."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

from potstill.config import load_config
from potstill.errors import PotstillError
from potstill.generate.stage import generate_stage
from potstill.ledger import Ledger
from tests.generate.loopback import LABELS, committed_answers
from tests.generate.test_generate import check_output
from tests.helpers.batch_server import BatchLoopback
from tests.helpers.cli import run_in_process

SECRET = "sk-batch-5e4d3c2b1a09f8e7"
ROOT = Path(__file__).resolve().parents[2]
MODELS = {"openai": "gpt-4o-mini", "anthropic": "claude-haiku-4-5-20251001"}
LIVE = {"openai": (0.15, 0.60, 0.075), "anthropic": (1.0, 5.0, 0.10)}  # the default table's USD per Mtok (in, out, cached)


def project(tmp: Path, srv: BatchLoopback, provider: str, n: int, generate: dict | None = None) -> Path:
    (tmp / "inputs.jsonl").write_text("".join(json.dumps({"id": f"r{i}", "input": f"item {i} text"}) + "\n" for i in range(n)))
    url = srv.openai_url if provider == "openai" else srv.anthropic_url
    cfg = {"run_dir": "run", "task": {"type": "classification", "labels": LABELS, "instruction": "Topic?"},
           "data": {"inputs": "inputs.jsonl"},
           "teacher": {"type": provider, "model": MODELS[provider], "base_url": url, "api_key_env": "TEACHER_KEY",
                       "max_tokens": 4, "max_retries": 2, "timeout_s": 10},
           "generate": {"engine": "batch", "batch_poll_s": 0.05, **(generate or {})}}
    (tmp / "potstill.yaml").write_text(yaml.safe_dump(cfg))
    return tmp / "potstill.yaml"


def ok_rows_per_hash(db: Path) -> Counter:
    with Ledger(db) as ledger:
        return Counter(r["request_hash"] for r in ledger.rows(role="teacher") if r["status"] == "ok")


def ledger_batches(db: Path) -> list[dict]:
    with Ledger(db) as ledger:
        return ledger.batches(open_only=False)


def cli_env() -> dict[str, str]:
    # Wide columns: rich wraps stderr at 80 off a terminal, and each message must read as one line.
    return {**os.environ, "TEACHER_KEY": SECRET, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}", "COLUMNS": "400"}


def cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """``potstill ARGS`` in ``cwd`` with the teacher's key, in this process: these tests are of what the
    command does; the kills run it as a process of its own, and the key checks (``cli_process``) read
    everything its process wrote."""
    return run_in_process(args, cwd, cli_env())


def cli_process(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "potstill.cli", *args], cwd=cwd, env={**cli_env(), **env},
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_batches_answer_every_input_once_at_the_batch_price(tmp_path, monkeypatch, provider):
    monkeypatch.setenv("TEACHER_KEY", SECRET)
    with BatchLoopback(key=SECRET, expire=0.05, fail=0.05) as srv:
        cfg_path = project(tmp_path, srv, provider, 300, {"batch_max_requests": 120})
        summary = generate_stage(load_config(cfg_path))
        stats = srv.stats()
        out = cli(["cost", "run"], tmp_path)
    check_output(tmp_path / "run" / "teacher.jsonl", 300)
    db = tmp_path / "run" / "calls.sqlite"
    assert set(ok_rows_per_hash(db).values()) == {1} and len(ok_rows_per_hash(db)) == 300
    batches = ledger_batches(db)
    first = [b for b in batches if b["attempt"] == 1]
    assert [b["requests"] for b in first] == [120, 120, 60]  # split at batch_max_requests
    assert all(b["state"] == "collected" and b["batch_id"] for b in batches)
    # every batch in the ledger was created once at the server, and no other
    assert stats["created"] == {provider: len(batches)}
    # expired and failed requests (and only they) went out a second time, alone
    resent = {h for h, k in stats["submissions"].items() if k == 2}
    assert set(stats["submissions"].values()) == {1, 2} and len(stats["submissions"]) == 300
    assert sum(b["requests"] for b in batches if b["attempt"] == 2) == len(resent) == summary["retries"]
    # priced at half the live price; `potstill cost` shows the discount
    with Ledger(db) as ledger:
        rows = ledger.rows(role="teacher")
    i, o, c = LIVE[provider]
    assert provider == "openai" or all(r["cached_input_tokens"] for r in rows)  # the loopback reports cache reads
    live = sum((r["input_tokens"] - r["cached_input_tokens"]) * i + r["cached_input_tokens"] * c
               + r["output_tokens"] * o for r in rows) / 1e6
    assert summary["cost_usd"] == pytest.approx(live / 2) and all(r["price_multiplier"] == 0.5 for r in rows)
    assert out.returncode == 0, out.stderr
    m = re.search(r"(\d+) through batches, \$([\d.]+) vs \$([\d.]+) at the live price \(saved \$([\d.]+)\)", out.stdout)
    assert m, out.stdout
    assert int(m[1]) == 300 and [float(x) for x in m.groups()[1:]] == pytest.approx([live / 2, live, live / 2], abs=1e-4)


def test_batch_price_comes_from_the_price_table(tmp_path, monkeypatch):
    monkeypatch.setenv("TEACHER_KEY", SECRET)
    with BatchLoopback(key=SECRET) as srv:
        cfg = load_config(project(tmp_path, srv, "openai", 20), {"generate.batch_price": {"openai": 0.25}})
        summary = generate_stage(cfg)
    with Ledger(tmp_path / "run" / "calls.sqlite") as ledger:
        rows = ledger.rows(role="teacher")
    live = sum(r["input_tokens"] * 0.15 + r["output_tokens"] * 0.60 for r in rows) / 1e6
    assert summary["cost_usd"] == pytest.approx(live * 0.25)
    with pytest.raises(Exception, match="batch_price.openai"):
        load_config(tmp_path / "potstill.yaml", {"generate.batch_price": {"openai": 0}})


def _wait(cond, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not cond() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before the kill point"
    assert cond(), "the kill point was never reached"


def kill_with_batch_open(tmp_path: Path, cfg_path: Path) -> Path:
    """Run ``potstill generate -c cfg_path`` and SIGKILL it once its one batch is at the provider;
    returns the run's ledger."""
    db = tmp_path / "run" / "calls.sqlite"
    proc = subprocess.Popen([sys.executable, "-m", "potstill.cli", "generate", "-c", str(cfg_path)], cwd=tmp_path,
                            env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait(lambda: _submitted(db) == 1, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return db


def _submitted(db: Path) -> int:
    try:
        con = sqlite3.connect(db, timeout=1)
        try:
            return con.execute("SELECT COUNT(*) FROM batches WHERE batch_id IS NOT NULL").fetchone()[0]
        finally:
            con.close()
    except sqlite3.Error:
        return 0


def _stored(srv: BatchLoopback, provider: str) -> bool:
    st = srv.stats()
    return (st["uploads"] if provider == "openai" else sum(st["created"].values())) >= 1


KILL_POINTS = {
    # during upload: the server has stored the file (Anthropic: the batch, sent inline) and not answered yet
    "upload": ({"upload_delay": 1.5}, lambda srv, db, p: _stored(srv, p)),
    # during the OpenAI create call, after the upload's file id was committed
    "create": ({"upload_delay": 1.5}, lambda srv, db, p: sum(srv.stats()["created"].values()) >= 1),
    # during polling: the batch ids are committed, the batches are still running
    "polling": ({"latency": 3.0}, lambda srv, db, p: _submitted(db) == 2),
    # during result download: some results committed, the stream still flowing
    "download": ({"results_delay": 0.1, "latency": 0.2}, lambda srv, db, p: committed_answers(db) >= 200),
}


@pytest.mark.parametrize(("provider", "point"), [(p, k) for p in ("openai", "anthropic") for k in KILL_POINTS
                                                 if not (p == "anthropic" and k == "create")])
def test_kill_9_resumes_the_same_batches_and_pays_nothing_twice(tmp_path, provider, point):
    opts, reached = KILL_POINTS[point]
    n = 500
    with BatchLoopback(key=SECRET, **opts) as srv:
        cfg_path = project(tmp_path, srv, provider, n, {"batch_max_requests": 400})
        db = tmp_path / "run" / "calls.sqlite"
        proc = subprocess.Popen([sys.executable, "-m", "potstill.cli", "generate", "-c", str(cfg_path)], cwd=tmp_path,
                                env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait(lambda: reached(srv, db, provider), proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        done_before = committed_answers(db)
        assert done_before < n and not (tmp_path / "run" / "teacher.jsonl").exists()
        final = cli(["generate", "-c", str(cfg_path)], tmp_path)
        assert final.returncode == 0, final.stderr
        stats = srv.stats()
    check_output(tmp_path / "run" / "teacher.jsonl", n)
    per_hash = ok_rows_per_hash(db)
    assert len(per_hash) == n and set(per_hash.values()) == {1}  # every input answered exactly once
    assert set(stats["submissions"].values()) == {1}  # no request went into two batches
    batches = ledger_batches(db)
    assert stats["created"] == {provider: 2} and len(batches) == 2  # the same two batches, resumed
    if provider == "openai":
        assert stats["uploads"] == 2  # the file stored before the kill was found, not uploaded again
    if point in ("polling", "download"):
        assert "resuming 2 open" in final.stderr
    if point == "download":
        assert done_before >= 200 and stats["downloads"] >= 2  # read again, skipping what was committed


def test_expired_items_past_the_resubmit_limit_are_error_rows_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("TEACHER_KEY", SECRET)
    with BatchLoopback(key=SECRET, expire=0.2) as srv:
        cfg_path = project(tmp_path, srv, "openai", 100, {"batch_resubmits": 0})
        with pytest.raises(PotstillError) as e:
            generate_stage(load_config(cfg_path))
        msg = str(e.value)
        assert "\n" not in msg and "teacher calls failed" in msg and "expired or failed 1 times" in msg
        answered = len(ok_rows_per_hash(tmp_path / "run" / "calls.sqlite"))
        assert 60 < answered < 100  # the answered ones are kept
        # a rerun resubmits only the expired ones (the server answers a second submission)
        generate_stage(load_config(cfg_path))
        stats = srv.stats()
    check_output(tmp_path / "run" / "teacher.jsonl", 100)
    assert sum(k == 2 for k in stats["submissions"].values()) == 100 - answered


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_a_malformed_results_line_is_one_line_and_its_request_is_resubmitted(tmp_path, provider):
    with BatchLoopback(key=SECRET, malformed=True) as srv:
        cfg_path = project(tmp_path, srv, provider, 50)
        run = cli(["generate", "-c", str(cfg_path)], tmp_path)
        stats = srv.stats()
    assert run.returncode == 0, run.stderr
    lines = [ln for ln in run.stderr.splitlines() if "malformed" in ln]
    assert len(lines) == 1 and "1 malformed results line(s)" in lines[0] and "resubmitted" in lines[0]
    check_output(tmp_path / "run" / "teacher.jsonl", 50)
    assert sorted(Counter(stats["submissions"].values()).items()) == [(1, 49), (2, 1)]


def test_a_results_file_gone_from_the_provider_is_one_line_and_resubmitted(tmp_path):
    with BatchLoopback(key=SECRET, lose_output=True, fail=0.1) as srv:
        cfg_path = project(tmp_path, srv, "openai", 60)
        run = cli(["generate", "-c", str(cfg_path)], tmp_path)
        stats = srv.stats()
    assert run.returncode == 0, run.stderr
    lines = [ln for ln in run.stderr.splitlines() if "not found at the provider" in ln]
    assert len(lines) == 1 and "404" in lines[0]
    check_output(tmp_path / "run" / "teacher.jsonl", 60)
    # the error file was still read: its failed items and the lost file's answers went out again
    assert set(stats["submissions"].values()) == {2}


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_a_quota_refusal_is_one_line_and_the_submitted_batch_is_collected_on_rerun(tmp_path, provider):
    with BatchLoopback(key=SECRET, quota_after=1) as srv:
        cfg_path = project(tmp_path, srv, provider, 50, {"batch_max_requests": 30})
        run = cli_process(["generate", "-c", str(cfg_path)], tmp_path)
        assert run.returncode == 2
        err = [ln for ln in run.stderr.splitlines() if ln.startswith("error:")]
        assert len(err) == 1 and "quota exceeded" in err[0] and "nothing in it was billed" in err[0]
        assert SECRET not in run.stderr
        states = [b["state"] for b in ledger_batches(tmp_path / "run" / "calls.sqlite")]
        assert states == ["submitted", "refused"]  # the paid batch's id is in the ledger
        srv.set_quota(None)
        rerun = cli(["generate", "-c", str(cfg_path)], tmp_path)
        assert rerun.returncode == 0, rerun.stderr
        stats = srv.stats()
    check_output(tmp_path / "run" / "teacher.jsonl", 50)
    assert stats["created"] == {provider: 2} and set(stats["submissions"].values()) == {1}


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_a_refused_key_is_one_line_that_says_to_check_it_not_to_wait_for_quota(tmp_path, provider):
    """A 401 from the batch API ended with 'Rerun when the quota allows': a bad key is not fixed by
    waiting. The line names the key's variable, never the key."""
    with BatchLoopback(key=SECRET) as srv:
        cfg_path = project(tmp_path, srv, provider, 5)
        run = cli_process(["generate", "-c", str(cfg_path)], tmp_path, TEACHER_KEY="sk-wrong-0000")
    err = [ln for ln in run.stderr.splitlines() if ln.startswith("error:")]
    assert run.returncode == 2 and len(err) == 1, run.stderr
    assert "HTTP 401" in err[0] and "Check the key in $TEACHER_KEY" in err[0] and "quota" not in err[0], err[0]
    assert "sk-wrong-0000" not in run.stderr and SECRET not in run.stderr


def test_a_batch_failed_whole_for_token_limit_is_one_line_and_resent_on_rerun(tmp_path):
    with BatchLoopback(key=SECRET, fail_quota=True) as srv:
        cfg_path = project(tmp_path, srv, "openai", 40)
        run = cli(["generate", "-c", str(cfg_path)], tmp_path)
        err = [ln for ln in run.stderr.splitlines() if ln.startswith("error:")]
        assert run.returncode == 2 and len(err) == 1 and "token_limit_exceeded" in err[0]
        assert "none of its 40 requests was billed" in err[0]
        rerun = cli(["generate", "-c", str(cfg_path)], tmp_path)
        assert rerun.returncode == 0, rerun.stderr
    check_output(tmp_path / "run" / "teacher.jsonl", 40)


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_a_key_quoted_in_batch_item_errors_is_redacted_in_the_ledger(tmp_path, monkeypatch, provider):
    """Per-line errors in a batch's results go to the ledger and the run's messages through the
    same redaction as a live call's error."""
    monkeypatch.setenv("TEACHER_KEY", SECRET)
    with BatchLoopback(key=SECRET, fail=0.3, echo_key=True) as srv:
        with pytest.raises(PotstillError, match="teacher calls failed") as e:
            generate_stage(load_config(project(tmp_path, srv, provider, 30)))
    assert SECRET not in str(e.value) and "request refused for key ***" in str(e.value)
    with Ledger(tmp_path / "run" / "calls.sqlite") as ledger:
        errors = [r["error"] for r in ledger.rows(role="teacher") if r["status"] != "ok"]
    assert errors and all("request refused for key ***" in e for e in errors)
    assert SECRET not in (tmp_path / "run" / "calls.sqlite").read_bytes().decode("latin-1")


def test_a_key_quoted_in_a_failed_batch_reason_is_redacted(tmp_path):
    with BatchLoopback(key=SECRET, fail_quota=True, echo_key=True) as srv:
        run = cli_process(["generate", "-c", str(project(tmp_path, srv, "openai", 10))], tmp_path)
    assert run.returncode == 2 and "token_limit_exceeded" in run.stderr and "(key ***)" in run.stderr
    assert SECRET not in run.stderr + run.stdout


def test_batch_needs_an_api_teacher(tmp_path):
    with BatchLoopback(key=SECRET) as srv:
        cfg_path = project(tmp_path, srv, "openai", 5)
    raw = yaml.safe_load(cfg_path.read_text())
    raw["teacher"] = {"type": "replay", "replay_path": "x.jsonl"}
    cfg_path.write_text(yaml.safe_dump(raw))
    (tmp_path / "x.jsonl").write_text("")
    run = cli(["generate", "-c", str(cfg_path)], tmp_path)
    assert run.returncode == 2 and "engine batch needs an openai or anthropic teacher" in run.stderr


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_a_batch_cancelled_from_outside_has_its_unrun_requests_resubmitted(tmp_path, provider):
    with BatchLoopback(key=SECRET, latency=30) as srv:
        cfg_path = project(tmp_path, srv, provider, 80)
        db = tmp_path / "run" / "calls.sqlite"
        proc = subprocess.Popen([sys.executable, "-m", "potstill.cli", "generate", "-c", str(cfg_path)], cwd=tmp_path,
                                env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        _wait(lambda: _submitted(db) == 1, proc)
        bid = ledger_batches(db)[0]["batch_id"]
        # the user cancels it in the provider's console (here: the official SDK)
        if provider == "openai":
            from openai import OpenAI

            OpenAI(api_key=SECRET, base_url=srv.openai_url).batches.cancel(bid)
        else:
            from anthropic import Anthropic

            Anthropic(api_key=SECRET, base_url=srv.anthropic_url).messages.batches.cancel(bid)
        srv.set_latency(0.2)  # the resubmission ends quickly
        _, err = proc.communicate(timeout=120)
        stats = srv.stats()
    assert proc.returncode == 0, err
    check_output(tmp_path / "run" / "teacher.jsonl", 80)
    resent = sum(k == 2 for k in stats["submissions"].values())
    assert stats["cancels"] == 1 and 10 < resent < 70 and set(stats["submissions"].values()) == {1, 2}
    assert f"{80 - resent} of 80 answered, {resent} expired, failed or missing are resubmitted alone" in err


def test_a_batch_the_provider_no_longer_knows_is_marked_lost_and_its_requests_sent_again(tmp_path):
    """A batch id the provider answers 404 for (a key of another project or workspace) stopped every
    rerun with a line saying that a rerun resumes it, and the live engines refused its requests:
    the run was blocked for good."""
    with BatchLoopback(key=SECRET, latency=30) as srv:
        cfg_path = project(tmp_path, srv, "openai", 10)
        db = kill_with_batch_open(tmp_path, cfg_path)
    bid = ledger_batches(db)[0]["batch_id"]
    fresh = BatchLoopback(key=SECRET)
    fresh.port = srv.port  # the same address, a fresh server: the batch id in the ledger is unknown there
    fresh.args = [f"--port={srv.port}", f"--key={SECRET}"]
    with fresh:
        run = cli_process(["generate", "-c", str(cfg_path)], tmp_path)
        stats = fresh.stats()
    assert run.returncode == 0, run.stderr[-2000:]
    lost = [ln for ln in run.stderr.splitlines() if "marked lost" in ln]
    assert len(lost) == 1 and bid in lost[0] and "its 10 unanswered requests are sent again" in lost[0], lost
    assert "Traceback" not in run.stderr and SECRET not in run.stderr
    check_output(tmp_path / "run" / "teacher.jsonl", 10)
    assert [(b["batch_id"], b["state"]) for b in ledger_batches(db)][0] == (bid, "lost")
    assert [b["state"] for b in ledger_batches(db)][1:] == ["collected"]
    assert stats["created"] == {"openai": 1} and set(stats["submissions"].values()) == {1}


def test_preflight_projects_the_batch_price(tmp_path, monkeypatch):
    from potstill.preflight import _Ctx, projected_cost

    with BatchLoopback(key=SECRET) as srv:
        cfg_path = project(tmp_path, srv, "openai", 40)
    monkeypatch.chdir(tmp_path)  # data.inputs is relative to the project
    live, _, _ = projected_cost(_Ctx(load_config(cfg_path, {"generate.engine": "async"})))
    batch, _, how = projected_cost(_Ctx(load_config(cfg_path, {"generate.batch_price": {"openai": 0.4}})))
    assert live > 0 and batch == pytest.approx(live * 0.4) and "at 0.4 of the live price (batch)" in how
