"""The one-time cost of distilling in eval.json: the teacher's spend on building the dataset, read
from the ledger, and never the teacher's answers to served traffic (an operating cost)."""

import json
import shutil

import pytest

from potstill.config import load_config
from potstill.evaluate.stage import evaluate_stage
from potstill.ledger import Call, Ledger, ServedCall


def test_served_escalations_are_not_a_one_time_cost(tmp_path, tiny_model):
    run = tmp_path / "run"
    run.mkdir()
    rows = [{"input": f"text {i}", "output": f"summary {i}"} for i in range(4)]
    (run / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    shutil.copytree(tiny_model, run / "student")
    with Ledger(run / "calls.sqlite") as ledger:
        # What distilling paid: two generate calls, $0.01 each.
        for i in range(2):
            ledger.record(Call(request_hash=f"g{i}", role="teacher", stage="generate", model="t", request={"i": i},
                               cost_usd=0.01))
        # A month of serving later: 3 requests escalated to the teacher at $2 each, logged as served.
        for i in range(3):
            ledger.record_served(ServedCall(request={"messages": [{"role": "user", "content": f"q{i}"}]},
                                            answered_by="teacher", model="t", content="a", cost_usd=2.0,
                                            request_hash=f"s{i}"))
    cfg = load_config(overrides={"run_dir": str(run), "task": {"type": "freetext", "instruction": "answer",
                                                                "max_output_tokens": 2},
                                 "student.model": str(tiny_model),
                                 "evaluate": {"latency_samples": 2, "batch_size": 2, "include_untrained": False},
                                 "report": {"min_slice_n": 2, "bootstrap_samples": 100}})
    evaluate_stage(cfg)
    ev = json.loads((run / "eval.json").read_text())
    assert ev["one_time"]["generation_usd"] == pytest.approx(0.02)
    assert ev["one_time"]["generation_calls"] == 2
    assert "2 successful teacher calls" in ev["sources"]["generation_usd"]
