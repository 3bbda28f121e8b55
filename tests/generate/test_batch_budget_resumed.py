"""generate.budget_usd with ``generate.engine: batch`` when a killed run left provider batches open:
the batches a rerun resumes are billed when they end, so they count against its budget."""

from __future__ import annotations

import json

import yaml

from potstill.config import load_config
from potstill.records import Record
from potstill.tasks import get_task
from potstill.teachers import get_teacher
from tests.generate.test_batch import SECRET, cli, kill_with_batch_open, ledger_batches, project
from tests.helpers.batch_server import BatchLoopback


def test_resumed_open_batches_count_against_the_budget_of_the_rerun(tmp_path, monkeypatch):
    """A run killed while its batch of 100 was open, then a rerun over 200 inputs under a budget
    that holds 150 requests' worst case: the 100 resumed ones are paid too, so only ~50 new ones
    may go out (the budget check counted the new ones alone and sent all 100)."""
    with BatchLoopback(key=SECRET, latency=60) as srv:
        cfg_path = project(tmp_path, srv, "openai", 100)
        raw = yaml.safe_load(cfg_path.read_text())
        raw["teacher"]["max_tokens"] = 64  # the batch engine's worst case; preflight projects a label's few tokens
        cfg_path.write_text(yaml.safe_dump(raw))
        db = kill_with_batch_open(tmp_path, cfg_path)
        assert srv.stats()["created"] == {"openai": 1}
        (tmp_path / "inputs.jsonl").write_text(
            "".join(json.dumps({"id": f"r{i}", "input": f"item {i} text"}) + "\n" for i in range(200)))
        # The worst case of one request at the batch price (all of max_tokens), as generate prices it.
        monkeypatch.setenv("TEACHER_KEY", SECRET)
        cfg = load_config(cfg_path)
        teacher = get_teacher(cfg.teacher, get_task(cfg.task))
        est = teacher.estimate_tokens(teacher.request(Record(id="r", messages=[{"role": "user", "content": "item 150 text"}])))
        one = ((est - 64) * 0.15 + 64 * 0.60) / 1e6 * 0.5
        srv.set_latency(0.2)
        rerun = cli(["generate", "-c", str(cfg_path), f"--generate.budget_usd={150.5 * one}"], tmp_path)
        stats = srv.stats()
    assert rerun.returncode == 2 and "budget of" in rerun.stderr, rerun.stderr
    assert "resuming 1 open openai batch(es) holding 100 requests" in " ".join(rerun.stderr.split())
    new = sum(b["requests"] for b in ledger_batches(db)) - 100
    assert set(stats["submissions"].values()) == {1}
    assert 40 <= new <= 55, new  # resumed + new within the budget, not 100 + 100
