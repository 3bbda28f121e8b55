"""Anthropic crash recovery: a batch created just before a kill has no id in the ledger, and Message
Batches carry no metadata, so the rerun takes an unclaimed batch of the same size created after
its row. Another project on the same key may have sent one since. The rerun took the newest: the
other project's, whose results held none of its requests, which it then bought a second time
while its own batch (paid) was never collected."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections import Counter

from potstill.ledger import Ledger
from tests.generate.test_batch import SECRET, _stored, _wait, cli_env, ledger_batches, project
from tests.generate.test_generate import check_output
from tests.helpers.batch_server import BatchLoopback
from tests.helpers.cli import run_main


def _other_project_batch(srv: BatchLoopback, n: int) -> str:
    """A batch of ``n`` requests that another project sends on the same key (the official SDK)."""
    from anthropic import Anthropic

    client = Anthropic(api_key=SECRET, base_url=srv.anthropic_url)
    reqs = [{"custom_id": f"other-{i}", "params": {"model": "claude-haiku-4-5-20251001", "max_tokens": 4,
                                                  "messages": [{"role": "user", "content": f"other {i}"}]}}
            for i in range(n)]
    return client.messages.batches.create(requests=reqs).id


def _ours(db) -> set[str]:
    with Ledger(db) as ledger:
        return {h for b in ledger.batches(open_only=False) for h in ledger.batch_items(b["key"])}


def test_the_rerun_takes_its_own_batch_not_a_later_one_of_the_same_size(tmp_path):
    n = 12
    with BatchLoopback(key=SECRET, upload_delay=1.5) as srv:
        cfg_path = project(tmp_path, srv, "anthropic", n)
        db = tmp_path / "run" / "calls.sqlite"
        proc = subprocess.Popen([sys.executable, "-m", "potstill.cli", "generate", "-c", str(cfg_path)], cwd=tmp_path,
                                env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait(lambda: _stored(srv, "anthropic"), proc)  # created at the provider, its id not yet committed
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert [b["batch_id"] for b in ledger_batches(db)] == [None]
        other = _other_project_batch(srv, n)
        rerun = subprocess.run([sys.executable, "-m", "potstill.cli", "generate", "-c", str(cfg_path)], cwd=tmp_path,
                               env=cli_env(), capture_output=True, text=True, timeout=300)
        stats = srv.stats()
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    check_output(tmp_path / "run" / "teacher.jsonl", n)
    batches = ledger_batches(db)
    assert len(batches) == 1 and batches[0]["batch_id"] != other and batches[0]["state"] == "collected"
    ours = _ours(db)
    assert Counter(v for k, v in stats["submissions"].items() if k in ours) == Counter({1: n})  # none paid twice
    assert stats["created"] == {"anthropic": 2}  # ours and the other project's


def test_a_batch_whose_results_hold_none_of_ours_is_not_taken(tmp_path, monkeypatch, capsys):
    """The row was committed but the create call never reached the provider (it was down); another
    project's batch of the same size came after. Its results hold none of the row's custom_ids:
    the rerun says so in one line, marks it as another's and sends its own."""
    n = 8
    monkeypatch.setenv("TEACHER_KEY", SECRET)
    monkeypatch.chdir(tmp_path)
    with BatchLoopback(key=SECRET) as srv:
        port = srv.port
        cfg_path = project(tmp_path, srv, "anthropic", n)
    code, _ = run_main(monkeypatch, capsys, "generate", "-c", str(cfg_path))  # nothing listens: connection refused
    db = tmp_path / "run" / "calls.sqlite"
    assert code == 2 and [(b["batch_id"], b["state"]) for b in ledger_batches(db)] == [(None, "preparing")]
    fresh = BatchLoopback(key=SECRET)
    fresh.port = port
    fresh.args = [f"--port={port}", f"--key={SECRET}"]
    with fresh:
        other = _other_project_batch(fresh, n)
        code, err = run_main(monkeypatch, capsys, "generate", "-c", str(cfg_path))
        stats = fresh.stats()
    said = " ".join(" ".join(err).split())
    assert code == 0, said
    check_output(tmp_path / "run" / "teacher.jsonl", n)
    assert said.count("holds none of") == 1 and other in said, said
    states = {b["batch_id"]: (b["state"], b["requests"]) for b in ledger_batches(db)}
    assert states.pop(other) == ("foreign", 0)  # kept, so that no later search takes it again
    assert [s for s, _ in states.values()] == ["collected"]
    ours = _ours(db)
    assert Counter(v for k, v in stats["submissions"].items() if k in ours) == Counter({1: n})
